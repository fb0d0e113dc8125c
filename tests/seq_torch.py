"""Whole torch models of issue 13's patterns, as users write them: every forward
packs the padded batch with pack_padded_sequence(enforce_sorted=False). Used by
tools/make_seq_fixtures.py and by the live tests of tests/test_sequential*.py
(imports torch: only where torch is installed).

Each class has PIPELINE (the text lstm_infer reads it with), BATCH_FIRST, TAKES_IDS,
READOUT, and head(v): the layers after the readout, which forward uses too. A
length-0 sequence cannot be packed: expected(...) gives torch's result for the
others and, for it, head() of what the readout rule says (zeros; h_0 = 0 for final).
"""
import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


def _pack(x, lengths, batch_first):
    return pack_padded_sequence(x, torch.as_tensor(lengths).cpu(), batch_first=batch_first,
                                enforce_sorted=False)


def _unpack(packed, T, batch_first):
    return pad_packed_sequence(packed, batch_first=batch_first, total_length=T)[0]


class Classifier(nn.Module):
    """Embedding(padding_idx) -> bi-LSTM(2 layers) -> final -> Dropout -> Linear -> Softmax."""

    PIPELINE = "embedding > lstm > final > dropout > fc > softmax"
    BATCH_FIRST, TAKES_IDS, READOUT = False, True, "final"

    def __init__(self, vocab=40, emb=8, hidden=6, classes=4):
        super().__init__()
        self.embedding = nn.Embedding(vocab, emb, padding_idx=0)
        self.lstm = nn.LSTM(emb, hidden, num_layers=2, bidirectional=True, dropout=0.2)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(2 * hidden, classes)

    def head(self, v):
        return torch.softmax(self.fc(self.drop(v)), dim=-1)

    def forward(self, ids, lengths):
        _, (h_n, _) = self.lstm(_pack(self.embedding(ids), lengths, False))
        return self.head(torch.cat((h_n[-2], h_n[-1]), dim=1))


class Regressor(nn.Module):
    """LSTM -> steps -> Linear: per-step regression on float input."""

    PIPELINE = "lstm > steps > proj"
    BATCH_FIRST, TAKES_IDS, READOUT = False, False, "steps"

    def __init__(self, features=5, hidden=7, outputs=2):
        super().__init__()
        self.lstm = nn.LSTM(features, hidden)
        self.proj = nn.Linear(hidden, outputs)

    def head(self, v):
        return self.proj(v)

    def forward(self, x, lengths):
        out, _ = self.lstm(_pack(x, lengths, False))
        return self.head(_unpack(out, x.shape[0], False))


class Scorer(nn.Module):
    """GRU (batch_first) -> last -> Linear -> Sigmoid."""

    PIPELINE = "gru > last > score > sigmoid"
    BATCH_FIRST, TAKES_IDS, READOUT = True, False, "last"

    def __init__(self, features=5, hidden=6):
        super().__init__()
        self.gru = nn.GRU(features, hidden, batch_first=True)
        self.score = nn.Linear(hidden, 1)

    def head(self, v):
        return torch.sigmoid(self.score(v))

    def forward(self, x, lengths):
        out = _unpack(self.gru(_pack(x, lengths, True))[0], x.shape[1], True)
        idx = torch.as_tensor(lengths) - 1
        return self.head(out[torch.arange(x.shape[0]), idx])


class Pooler(nn.Module):
    """Embedding -> LSTM(proj_size) -> mean -> LayerNorm -> Linear."""

    PIPELINE = "embedding > lstm > mean > norm > out"
    BATCH_FIRST, TAKES_IDS, READOUT = True, True, "mean"

    def __init__(self, vocab=30, emb=8, hidden=10, proj=4, classes=3):
        super().__init__()
        self.embedding = nn.Embedding(vocab, emb)
        self.lstm = nn.LSTM(emb, hidden, proj_size=proj, batch_first=True)
        self.norm = nn.LayerNorm(proj)
        self.out = nn.Linear(proj, classes)

    def head(self, v):
        return self.out(self.norm(v))

    def forward(self, ids, lengths):
        out = _unpack(self.lstm(_pack(self.embedding(ids), lengths, True))[0], ids.shape[1], True)
        mean = out.sum(dim=1) / torch.as_tensor(lengths, dtype=out.dtype)[:, None]
        return self.head(mean)


class Encoder(nn.Module):
    def __init__(self, emb, hidden):
        super().__init__()
        self.rnn = nn.LSTM(emb, hidden, bidirectional=True, batch_first=True)


class Tagger(nn.Module):
    """Embedding(padding_idx) -> bi-LSTM (nested: encoder.rnn) -> steps -> Linear
    without bias -> LogSoftmax: a tag distribution for every token."""

    PIPELINE = "emb > encoder.rnn > steps > tags > logsoftmax"
    BATCH_FIRST, TAKES_IDS, READOUT = True, True, "steps"

    def __init__(self, vocab=50, emb=6, hidden=5, tags=7):
        super().__init__()
        self.emb = nn.Embedding(vocab, emb, padding_idx=0)
        self.encoder = Encoder(emb, hidden)
        self.tags = nn.Linear(2 * hidden, tags, bias=False)

    def head(self, v):
        return torch.log_softmax(self.tags(v), dim=-1)

    def forward(self, ids, lengths):
        out = self.encoder.rnn(_pack(self.emb(ids), lengths, True))[0]
        return self.head(_unpack(out, ids.shape[1], True))


class ReluMax(nn.Module):
    """RNN(relu, 2 layers) -> max -> Linear -> Tanh (the nonlinearity is not in the
    state dict: from_state_dict(..., nonlinearity="relu"))."""

    PIPELINE = "rnn > max > fc > tanh"
    BATCH_FIRST, TAKES_IDS, READOUT = False, False, "max"
    NONLINEARITY = "relu"

    def __init__(self, features=4, hidden=6, outputs=3):
        super().__init__()
        self.rnn = nn.RNN(features, hidden, num_layers=2, nonlinearity="relu")
        self.fc = nn.Linear(hidden, outputs)

    def head(self, v):
        return torch.tanh(self.fc(v))

    def forward(self, x, lengths):
        out = _unpack(self.rnn(_pack(x, lengths, False))[0], x.shape[0], False)
        T = x.shape[0]
        valid = torch.arange(T)[:, None] < torch.as_tensor(lengths)[None, :]
        return self.head(out.masked_fill(~valid[..., None], float("-inf")).max(dim=0).values)


MODELS = {cls.__name__: cls for cls in (Classifier, Regressor, Scorer, Pooler, Tagger, ReluMax)}


def make_input(cls, model, T, lengths, seed):
    """A padded batch for the model: ids (pad 0 past each length) or floats."""
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    shape = (B, T) if cls.BATCH_FIRST else (T, B)
    if cls.TAKES_IDS:
        x = torch.randint(1, model.state_dict()[cls.PIPELINE.split()[0] + ".weight"].shape[0], shape,
                          generator=g)
    else:
        features = next(v for k, v in model.state_dict().items() if "weight_ih_l0" in k).shape[1]
        x = torch.randn(shape + (features,), generator=g)
    t = torch.arange(T)[None, :] if cls.BATCH_FIRST else torch.arange(T)[:, None]
    lens = torch.as_tensor(lengths)[:, None] if cls.BATCH_FIRST else torch.as_tensor(lengths)[None, :]
    pad = t >= lens
    if cls.TAKES_IDS:
        x[pad] = 0
    else:
        x[pad] = 0.0
    return x


@torch.no_grad()
def expected(cls, model, x, lengths):
    """torch's output for the batch, as lstm_infer defines it: per-step results are 0
    past each length; length-0 sequences get head() of the readout rule's zeros."""
    model.eval()
    lengths = list(lengths)
    B = len(lengths)
    keep = [b for b in range(B) if lengths[b] > 0]
    b_axis = 0 if cls.BATCH_FIRST else 1
    part = model(x.index_select(b_axis, torch.tensor(keep)), [lengths[b] for b in keep])
    if cls.READOUT == "steps":
        T = x.shape[1 - b_axis]
        out = torch.zeros((B, T, part.shape[-1]) if cls.BATCH_FIRST else (T, B, part.shape[-1]))
        for i, b in enumerate(keep):
            n = lengths[b]
            if cls.BATCH_FIRST:
                out[b, :n] = part[i, :n]
            else:
                out[:n, b] = part[:n, i]
        return out.numpy()
    width = next(m for m in model.modules() if isinstance(m, nn.RNNBase))
    size = (2 if width.bidirectional else 1) * (width.proj_size or width.hidden_size)
    zero = model.head(torch.zeros(1, size))[0]
    out = torch.stack([part[keep.index(b)] if lengths[b] else zero for b in range(B)])
    return out.numpy()


def save_inputs(x):
    return x.numpy().astype(np.int64 if x.dtype == torch.int64 else np.float32)
