"""The kernel sets (LSTM_INFER_ISA / li.set_isa names) this CPU can run, for parametrising."""
import lstm_infer as li


def available_isas():
    found = []
    for name in ("scalar", "avx2", "avx512", "neon"):
        try:
            li.set_isa(name)
            found.append(name)
        except ValueError:
            pass
    li.set_isa("auto")
    return found
