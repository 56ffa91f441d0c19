"""The AWD-LSTM language model (Merity, Keskar and Socher, 2018)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from awdlm.model.embedding_dropout import embedding_dropout
from awdlm.model.linear_cross_entropy import linear_cross_entropy
from awdlm.model.locked_dropout import LockedDropout
from awdlm.model.weight_drop import WeightDropLSTM

Hidden = list[tuple[Tensor, Tensor]]


@dataclass
class ModelOutput:
    """Outputs of one forward pass, every tensor time-major.

    A forward with ``targets`` returns ``loss`` and no ``logits``; one without
    returns ``logits`` and no ``loss``.
    """

    logits: Tensor | None  # (T, B, V)
    hidden: Hidden  # per layer, two (1, B, H_l) tensors
    last_raw: Tensor  # (T, B, H_last): last LSTM layer's output before dropout, for TAR
    last_dropped: Tensor  # (T, B, H_last): the same after output dropout, for AR
    loss: Tensor | None = None  # mean cross-entropy per target token, nats


class AWDLSTM(nn.Module):
    """Embedding -> N single-layer weight-dropped LSTMs -> tied decoder.

    Dropout is applied at five places: embedding dropout on word types
    (``dropoute``), locked dropout on the embedded input (``dropouti``),
    between LSTM layers (``dropouth``) and on the last layer's output
    (``dropout``), and DropConnect on every recurrent weight (``wdrop``).
    With ``tied=True`` the decoder shares the embedding matrix and the last
    LSTM layer has ``emsize`` units.
    """

    def __init__(
        self,
        ntoken: int,
        emsize: int = 400,
        nhid: int = 1150,
        nlayers: int = 3,
        dropout: float = 0.4,
        dropouth: float = 0.25,
        dropouti: float = 0.4,
        dropoute: float = 0.1,
        wdrop: float = 0.5,
        tied: bool = True,
        embed_dropout: str = "dense",
    ) -> None:
        super().__init__()
        self.ntoken = ntoken
        self.nlayers = nlayers
        self.dropout, self.dropouth, self.dropouti, self.dropoute = dropout, dropouth, dropouti, dropoute
        self.embed_dropout = embed_dropout

        self.encoder = nn.Embedding(ntoken, emsize)
        last_size = emsize if tied else nhid
        sizes = [emsize] + [nhid] * (nlayers - 1) + [last_size]
        self.rnns = nn.ModuleList(
            WeightDropLSTM(sizes[layer], sizes[layer + 1], wdrop) for layer in range(nlayers)
        )
        self.locked_dropout = LockedDropout()
        self.decoder = nn.Linear(last_size, ntoken)
        if tied:
            self.decoder.weight = self.encoder.weight
        self.init_weights()

    def init_weights(self) -> None:
        """Initialise embedding and decoder uniformly in [-0.1, 0.1], decoder bias 0."""
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        if self.decoder.weight is not self.encoder.weight:
            nn.init.uniform_(self.decoder.weight, -0.1, 0.1)

    def init_hidden(self, batch_size: int) -> Hidden:
        """Return zero (h, c) states for every layer."""
        weight = self.encoder.weight
        return [
            (
                weight.new_zeros(1, batch_size, rnn.lstm.hidden_size),
                weight.new_zeros(1, batch_size, rnn.lstm.hidden_size),
            )
            for rnn in self.rnns
        ]

    def forward(self, words: Tensor, hidden: Hidden, targets: Tensor | None = None) -> ModelOutput:
        """Run the model on ``words`` (T, B); with ``targets`` (T, B), return the loss in place of the logits.

        The loss goes through :func:`linear_cross_entropy`, which computes the
        decoder and cross-entropy in chunks and never keeps the (T, B, V) logits.
        """
        emb = embedding_dropout(
            words,
            self.encoder.weight,
            self.dropoute,
            strategy=self.embed_dropout,
            training=self.training,
        )  # (T, B, emsize)
        output = self.locked_dropout(emb, self.dropouti)

        new_hidden: Hidden = []
        for layer, rnn in enumerate(self.rnns):
            output, state = rnn(output, hidden[layer])  # (T, B, H_layer)
            new_hidden.append(state)
            if layer != self.nlayers - 1:
                output = self.locked_dropout(output, self.dropouth)
        last_raw = output
        last_dropped = self.locked_dropout(output, self.dropout)

        if targets is not None:
            loss = linear_cross_entropy(last_dropped, self.decoder.weight, self.decoder.bias, targets)
            return ModelOutput(None, new_hidden, last_raw, last_dropped, loss)
        logits = self.decoder(last_dropped)  # (T, B, V)
        return ModelOutput(logits, new_hidden, last_raw, last_dropped)


def detach_hidden(hidden: Hidden) -> Hidden:
    """Cut the graph at the batch boundary while keeping the state's values."""
    return [(h.detach(), c.detach()) for h, c in hidden]


def activation_regularization(last_dropped: Tensor, alpha: float) -> Tensor:
    """AR: ``alpha`` times the mean squared activation of the dropped last-layer output, in float32 or wider."""
    return alpha * last_dropped.float().pow(2).mean()


def temporal_activation_regularization(last_raw: Tensor, beta: float) -> Tensor:
    """TAR: ``beta`` times the mean squared change of the raw last-layer output between steps, in float32 or wider."""
    last_raw = last_raw.float()
    return beta * (last_raw[1:] - last_raw[:-1]).pow(2).mean()

