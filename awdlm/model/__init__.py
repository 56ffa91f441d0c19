"""The AWD-LSTM model and its regularizers."""

from awdlm.model.awd_lstm import AWDLSTM, ModelOutput, detach_hidden
from awdlm.model.embedding_dropout import embedding_dropout
from awdlm.model.locked_dropout import LockedDropout
from awdlm.model.weight_drop import WeightDropLSTM

__all__ = ["AWDLSTM", "LockedDropout", "ModelOutput", "WeightDropLSTM", "detach_hidden", "embedding_dropout"]
