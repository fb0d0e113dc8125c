"""Settings for the whole suite."""
import os

# Every call on the threads it plans, even where a busy machine looks like crowded CPUs to the
# engine's pool (which then runs calls on the caller's thread for a while: the results are the
# same bits, but the threaded paths would go untested). tests/c/test_pool.c tests the pool's
# own behaviour.
os.environ.setdefault("LSTM_INFER_DYNAMIC", "0")
