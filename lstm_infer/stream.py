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
threads. A call under 4e5 flops (_core.HOLD_GIL_FLOPS: a 64->128 LSTM step at
batch 1) keeps the GIL; longer calls release it, so other threads run meanwhile.

A li.Sequential streams too (SequentialStream, from model.stream()) when its
recurrent layers are uni-directional and it keeps every step (readout ``steps``,
or none after the last recurrent layer): the layers before the first recurrent
layer (an Embedding, say) and after it act on each step, each recurrent layer
carries its own state, and ``st.state`` is a tuple with one state per recurrent
layer in pipeline order.
"""
import math
import os
import weakref

import numpy as np

from . import _core
from .model import _as_int, _float_array, _to_numpy

__all__ = ["Stream", "SequentialStream", "sequential_stream"]



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
        batch_size = _as_int(batch_size, "batch_size", 1, 2**31 - 1)
        # each weight matrix entry is one multiply-add per step of each slot
        macs = sum(math.prod(shape) for shape in model._expected_shapes().values()
                   if len(shape) == 2)
        self._setup(model, batch_size, 2.0 * macs * batch_size)  # sets the read-only attribute model

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


# ---------------------------------------------------------------- whole models

_RECURRENT = ("LSTM", "GRU", "RNN")

# In a child forked while another thread was inside a whole model's stream call,
# that call never ends: its layers' states go back to where they were before it.
_SEQUENTIAL_STREAMS = weakref.WeakSet()


def _undo_calls_in_progress():
    for st in list(_SEQUENTIAL_STREAMS):
        st._undo()
        st._pending = None


os.register_at_fork(after_in_child=_undo_calls_in_progress)


def sequential_stream(model, batch_size=1):
    """A SequentialStream over a li.Sequential (see Sequential.stream); ValueError
    naming the layer when the model cannot stream."""
    return SequentialStream(model, batch_size)


class SequentialStream:
    """The recurrent state of `batch_size` independent sequences (slots) of a whole
    model (li.Sequential), advanced by calls, with Stream's behaviour.

    st(x, lengths=None), in the model's input form:
      token ids (Embedding first): x () [batch_size 1] or (batch_size,) for one
        step; (T, batch_size) ((batch_size, T) batch_first) for T steps
      floats: x (features,) [batch_size 1] or (batch_size, features) for one step;
        (T, batch_size, features) ((batch_size, T, features)) for T steps
      returns the model's per-step output: (out,), (batch_size, out), or
        (T, batch_size, out) ((batch_size, T, out)); 0 past each slot's length
      lengths: batch_size integers, the steps slot b takes from this call; a slot
        with 0 is idle (its state is untouched).
    st.state: a tuple with one state per recurrent layer in pipeline order, each in
    torch's layout ((h, c) for an LSTM, h otherwise; copies).
    """

    def __init__(self, model, batch_size=1):
        from .sequential import Sequential
        if not isinstance(model, Sequential):
            raise TypeError(f"sequential_stream runs an lstm_infer Sequential, got {type(model).__name__}")
        batch_size = _as_int(batch_size, "batch_size", 1, 2**31 - 1)
        layers = model.layers
        recurrent = [(name, m) for name, m in layers if m.kind in _RECURRENT]
        if not recurrent:
            raise ValueError(f"this Sequential ({model.pipeline}) has no recurrent layer: there is no state to "
                             f"carry between calls; call the model on each step instead")
        for name, m in recurrent:
            if m.bidirectional:
                raise ValueError(f"layer {name!r} ({m!r}) is bidirectional and cannot stream: its reverse "
                                 f"direction reads each sequence from its end, which a stream has not seen "
                                 f"yet (call the model on whole sequences instead)")
        for name, m in layers:
            if m.kind == "Readout" and m.mode != "steps":
                raise ValueError(f"readout {name!r} ({m.mode!r}) turns each whole sequence into one vector, "
                                 f"which a stream cannot give before the sequence ends; a stream gives an output "
                                 f"per step (readout 'steps'): call the model on whole sequences instead")
            if m.kind in ("Softmax", "LogSoftmax") and m.dim not in (-1, 2):
                raise ValueError(f"layer {name!r} ({m!r}) acts along dim {m.dim}, not along the features "
                                 f"(dim=-1): a stream runs each step by itself")
        self._model = model
        self._batch_size = batch_size
        self._streams = [m.stream(batch_size) for _, m in recurrent]
        self._names = [name for name, _ in recurrent]
        self._plan = []  # (kind, callable) per layer; readouts ('steps') and dropout do nothing
        k = 0
        for name, m in layers:
            if m.kind in _RECURRENT:
                self._plan.append(("recurrent", self._streams[k]))
                k += 1
            elif m.kind not in ("Readout", "Dropout"):
                self._plan.append((name, m))
        # one step without lengths runs on (batch, features) arrays, which takes the layers'
        # streams' one-step fast path; a dim=2 softmax needs the (T, batch, features) layout
        self._flat_steps = all(m.dim == -1 for _, m in layers if m.kind in ("Softmax", "LogSoftmax"))
        last = max(i for i, (_, m) in enumerate(layers) if m.kind in _RECURRENT)
        # a layer after the last recurrent one may change padded steps: zero them again
        self._remask = any(m.kind not in ("Readout", "Dropout") for _, m in layers[last + 1:])
        self._in_use = _core.InUse()
        self._pending = None  # the layers' state marks while a call runs
        _SEQUENTIAL_STREAMS.add(self)

    model = property(lambda self: self._model, doc="The model the stream runs.")
    batch_size = property(lambda self: self._batch_size)
    batch_first = property(lambda self: self._model.batch_first)

    def __repr__(self):
        return f"<SequentialStream of Sequential({self._model.pipeline}), batch_size={self._batch_size}>"

    def __reduce__(self):
        raise TypeError("a stream cannot be pickled or copied; save st.state and the model, and restore "
                        "with model.stream() and st.state = state")

    # ------------------------------------------------------------ calls
    def _exclusive(self, fn, *args):
        """fn(*args) with the stream to itself: another thread meanwhile gets RuntimeError."""
        with self._in_use:
            return fn(*args)

    def __call__(self, x, lengths=None):
        """One step or a chunk of steps (see the class docstring)."""
        return self._exclusive(self._call, x, lengths)

    def _call(self, input, lengths):
        model, B, bf = self._model, self._batch_size, self._model.batch_first
        ids = model.takes_ids
        x = self._input(input)
        step_ndim = 1 if ids else 2  # one step for batch_size slots
        if x.ndim == step_ndim - 1:
            if B != 1:
                raise ValueError(f"input of shape {x.shape} is one unbatched step, but this stream has "
                                 f"batch_size {B}: pass {self._step_shape()}")
            chunk, T, shape = x[None, None], None, "unbatched"
        elif x.ndim == step_ndim:
            if x.shape[0] != B:
                raise ValueError(f"input of shape {x.shape} is one step for {x.shape[0]} slots, but this "
                                 f"stream has batch_size {B} (for T steps pass {self._chunk_shape()})")
            chunk, T, shape = (x[:, None] if bf else x[None]), None, "step"
        elif x.ndim == step_ndim + 1:
            xb = x.shape[0] if bf else x.shape[1]
            if xb != B:
                raise ValueError(f"input of shape {x.shape} has batch {xb}, but this stream has batch_size "
                                 f"{B}: pass {self._chunk_shape()}")
            chunk, T, shape = x, (x.shape[1] if bf else x.shape[0]), "chunk"
        else:
            raise ValueError(f"input must be {self._step_shape()} for one step or {self._chunk_shape()} "
                             f"for T steps; got shape {x.shape}")
        lens = None if lengths is None else self._streams[0]._check_lengths(lengths, 1 if T is None else T)
        if T is None and lens is None and self._flat_steps:
            step = x.reshape((B,) + x.shape[x.ndim - step_ndim + 1:])  # (B[, F])
            out = self._run(step, None)
            return out[0] if shape == "unbatched" else out
        if T == 0:
            width = model.out_features
            return np.zeros((B, 0, width) if bf else (0, B, width), np.float32)
        chunk = self._run(chunk, lens)
        if self._remask and lens is not None:
            n = chunk.shape[1] if bf else chunk.shape[0]
            pad = np.arange(n)[:, None] >= lens[None, :]  # (T, B)
            chunk[pad.T if bf else pad] = 0.0
        if shape == "unbatched":
            return chunk[0, 0]
        if shape == "step":
            return chunk[:, 0] if bf else chunk[0]
        return chunk

    def _run(self, x, lens):
        """x through every layer: each recurrent layer's stream advances by the same
        steps, all or none (a failure or Ctrl-C in any layer undoes the others'
        steps, and so does a fork meanwhile in the child's copy)."""
        self._pending = [st._mark() for st in self._streams]
        try:
            with self._model._consistent.reading():  # every layer's weights from one load
                for kind, step in self._plan:
                    x = step(x, lens) if kind == "recurrent" else step(x)
        except BaseException:
            self._undo()
            raise
        finally:
            self._pending = None
        return x

    def _undo(self):
        """Every recurrent layer back where it was before the call in progress."""
        marks = self._pending
        if marks is not None:
            for st, mark in zip(self._streams, marks):
                st._rewind(mark)

    def _input(self, value):
        if not self._model.takes_ids:
            return _float_array(value, "input")
        arr = _to_numpy(value, "input")
        if arr.dtype.kind not in "iu":
            raise TypeError(f"input must hold integer token ids (the model starts with the Embedding "
                            f"{self._model.layers[0][0]!r}), got dtype {arr.dtype}")
        return arr

    def _step_shape(self):
        if self._model.takes_ids:
            return f"({self._batch_size},) token ids"
        return f"({self._batch_size}, {self._model.in_features})"

    def _chunk_shape(self):
        B = self._batch_size
        tail = ")" if self._model.takes_ids else f", {self._model.in_features})"
        return f"(batch_size={B}, T{tail}" if self.batch_first else f"(T, batch_size={B}{tail}"

    # ------------------------------------------------------------ state
    def reset(self, i=None):
        """Zeros the state of every slot, or of slot i only, in every recurrent layer."""
        self._exclusive(self._reset, i)

    def _reset(self, i):
        self._streams[0].reset(i)  # checks i before anything changes
        for st in self._streams[1:]:
            st.reset(i)

    def _states(self):
        return tuple(st.state for st in self._streams)

    def _set_states(self, states):
        for st, s in zip(self._streams, states):
            st.state = s

    @property
    def state(self):
        """A tuple with one state per recurrent layer (pipeline order), each in torch's
        layout: (h, c) for an LSTM, h otherwise (copies)."""
        return self._exclusive(self._states)

    @state.setter
    def state(self, value):
        self._exclusive(self._set_state, value)

    def _set_state(self, value):
        n = len(self._streams)
        if not isinstance(value, (tuple, list)) or len(value) != n:
            raise TypeError(f"this stream's state is a tuple of {n} state(s), one per recurrent layer "
                            f"({', '.join(map(repr, self._names))}), got "
                            + (f"{len(value)} entries" if isinstance(value, (tuple, list))
                               else type(value).__name__))
        old = self._states()
        for k, (st, s) in enumerate(zip(self._streams, value)):
            try:
                st.state = s
            except (TypeError, ValueError) as exc:
                self._set_states(old)  # all or nothing
                raise type(exc)(f"state of layer {self._names[k]!r}: {exc}") from None
