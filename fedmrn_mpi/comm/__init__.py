"""Communication: MPI transport (mechanism only), the upload wire format and the flat downlink buffer."""

from .flat_state import FlatState
from .transport import CHANNELS, Gathered, Transport, mpi_library_version
from .wire import HEADER_SIZE, Header, Message, WireError, decode_messages, encode_message

__all__ = ["CHANNELS", "FlatState", "Gathered", "HEADER_SIZE", "Header", "Message", "Transport", "WireError",
           "decode_messages", "encode_message", "mpi_library_version"]
