"""Streams: a uni-directional recurrent model fed one step (or one chunk) at a
time, carrying its state between calls, for one or many live sequences.

    st = model.stream(batch_size=1)    # li.LSTM / li.GRU / li.RNN, uni-directional
    y = st(x)                          # x (input,) or (batch_size, input): one step
    y = st(x)                          # x (T, batch_size, input): T steps
                                       #   ((batch_size, T, input) with batch_first)
    y = st(x, lengths=n)               # per-slot step counts; a slot with 0 is idle
    st.reset(); st.reset(i)            # zero every slot, or slot i
    st.state; st.state = s             # torch layout: (h, c) for the LSTM, h otherwise

Any split of a sequence into chunks gives what one call over the whole
sequence gives (bit for bit on one thread: the same C kernels run).
A stream belongs to one thread at a time: using it from a second thread while
a call runs raises RuntimeError. Many streams may share one model in many
threads.
"""
import numpy as np

from . import _core
from .model import _as_int, _float_array, _to_numpy

__all__ = ["Stream"]


class Stream(_core.StreamBase):
    """The recurrent state of `batch_size` independent sequences (slots) of a
    uni-directional model, advanced by calls.

    st(x, lengths=None):
      x (input_size,) [batch_size 1 only] -> one step, returns (out,)
      x (batch_size, input_size)          -> one step, returns (batch_size, out)
      x (T, batch_size, input_size), or (batch_size, T, input_size) for a
        batch_first model                 -> T steps, returns (T, batch_size, out)
        (or (batch_size, T, out)): the output of every step
      lengths: batch_size integers, the steps slot b takes from this call
        (in [0, T]; [0, 1] for one step). Outputs past a slot's length are 0; a
        slot with length 0 is idle: its state stays as it was, bit for bit.
    out is proj_size or hidden_size; the output is the last layer's h.
    """

    def __init__(self, model, batch_size=1):
        from .model import _Layer
        if not isinstance(model, _Layer):
            raise TypeError(f"a stream runs an lstm_infer LSTM, GRU or RNN, got "
                            f"{type(model).__name__}")
        if model.bidirectional:
            raise ValueError(f"{model!r} is bidirectional and cannot stream: its reverse "
                             f"direction reads each sequence from its end, which a stream "
                             f"has not seen yet (call the model on whole sequences instead)")
        batch_size = _as_int(batch_size, "batch_size", 1)
        self._setup(model, batch_size)  # sets the read-only attribute model

    def __repr__(self):
        return f"<Stream of {self.model!r}, batch_size={self.batch_size}>"

    def __reduce__(self):
        raise TypeError("a Stream cannot be pickled or copied; save st.state and the "
                        "model, and restore with model.stream() and st.state = state")

    # ------------------------------------------------------------ calls
    # __call__ (in _core.StreamBase) runs one step on a float32 array without
    # lengths directly and hands every other call to _call

    def _call(self, input, lengths=None):
        model, B = self.model, self.batch_size
        x = _float_array(input, "input")
        if x.ndim == 0 or x.ndim > 3:
            raise ValueError(f"input must be (batch_size, input_size) or (input_size,) for one "
                             f"step, or {self._chunk_shape('input_size')} for T steps; "
                             f"got shape {x.shape}")
        if x.shape[-1] != model.input_size:
            raise ValueError(f"input has {x.shape[-1]} features, expected input_size = "
                             f"{model.input_size}")
        if x.ndim == 1:
            if B != 1:
                raise ValueError(f"input of shape {x.shape} is one unbatched step, but this "
                                 f"stream has batch_size {B}: pass ({B}, {model.input_size})")
            x3, T, shape = x[None, None, :], None, (model.out_size,)
        elif x.ndim == 2:
            if x.shape[0] != B:
                raise ValueError(f"input of shape {x.shape} is one step for {x.shape[0]} "
                                 f"slots, but this stream has batch_size {B} (for T steps "
                                 f"pass {self._chunk_shape(model.input_size)})")
            x3, T, shape = x[None], None, (B, model.out_size)
        else:
            xb = x.shape[0] if self.batch_first else x.shape[1]
            if xb != B:
                raise ValueError(f"input of shape {x.shape} has batch {xb}, but this stream "
                                 f"has batch_size {B}: pass "
                                 f"{self._chunk_shape(model.input_size)}")
            x3 = x.transpose(1, 0, 2) if self.batch_first else x
            T = x3.shape[0]
            shape = (B, T, model.out_size) if self.batch_first else (T, B, model.out_size)
        lens = None if lengths is None else self._check_lengths(lengths, 1 if T is None else T)
        output = np.empty(shape, np.float32)
        if T == 0:
            return output  # nothing to run: the state stays as it was
        strides = x3.strides
        if (strides[2] != 4 and x3.shape[2] > 1) or strides[0] % 4 or strides[1] % 4:
            x3 = np.ascontiguousarray(x3)
        if T is None:
            out3 = output.reshape(1, B, model.out_size)
        else:
            out3 = output.transpose(1, 0, 2) if self.batch_first else output
        self._run_chunk(x3, lens, out3)
        return output

    def _chunk_shape(self, width):
        return (f"(batch_size={self.batch_size}, T, {width})" if self.batch_first
                else f"(T, batch_size={self.batch_size}, {width})")

    def _check_lengths(self, lengths, T):
        B = self.batch_size
        arr = np.array(_to_numpy(lengths, "lengths"))  # our own copy: read once, used by C
        if arr.dtype.kind not in "iu":
            raise TypeError(f"lengths must be integers, got dtype {arr.dtype}")
        if arr.ndim != 1 or arr.shape[0] != B:
            raise ValueError(f"lengths must be a 1-D array of {B} entries (one per slot), "
                             f"got shape {arr.shape}")
        if arr.min() < 0 or arr.max() > T:
            bad = int(arr[(arr < 0) | (arr > T)][0])
            raise ValueError(f"lengths must lie in [0, {T}] (the steps in this call), got {bad}")
        return np.ascontiguousarray(arr, dtype=np.int64)

    # ------------------------------------------------------------ state
    def reset(self, i=None):
        """Zeros the state of every slot, or of slot i only (a sequence ended
        there and a new one starts)."""
        if i is None:
            self._reset_slot(-1)
            return
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"slot index must be an int, got {type(i).__name__}")
        if not 0 <= i < self.batch_size:
            raise IndexError(f"slot {i} is out of range for batch_size {self.batch_size}")
        self._reset_slot(int(i))

    @property
    def state(self):
        """A copy of the state in torch's layout: (h, c) for the LSTM, h for the
        GRU and RNN; h (num_layers, batch_size, proj_size or hidden_size), c
        (num_layers, batch_size, hidden_size)."""
        h, c = self._get_state()
        return h if c is None else (h, c)

    @state.setter
    def state(self, value):
        model, B, L = self.model, self.batch_size, self.model.num_layers
        if model._core.has_c:
            if not isinstance(value, (tuple, list)) or len(value) != 2:
                raise TypeError("an LSTM stream's state is a tuple (h, c)")
            h = self._check_state(value[0], "h", (L, B, model.out_size))
            c = self._check_state(value[1], "c", (L, B, model.hidden_size))
        else:
            if isinstance(value, (tuple, list)):
                raise TypeError(f"a {model.kind} stream's state is one array h, not a "
                                f"{type(value).__name__}")
            h, c = self._check_state(value, "h", (L, B, model.hidden_size)), None
        self._set_state(h, c)

    @staticmethod
    def _check_state(value, name, want):
        arr = _float_array(value, name)
        if arr.shape != want:
            raise ValueError(f"state {name} must have shape {want} (num_layers, batch_size, "
                             f"width), got {arr.shape}")
        return arr
