/* status.c - the text of each status code. */
#include "lstm_infer.h"

const char *lstm_status_string(lstm_status s) {
    switch (s) {
    case LSTM_OK: return "ok";
    case LSTM_ERR_INVALID_ARGUMENT: return "invalid argument";
    case LSTM_ERR_OUT_OF_MEMORY: return "out of memory";
    case LSTM_ERR_SIZE_OVERFLOW: return "sizes too large (overflow)";
    case LSTM_ERR_WORKSPACE_TOO_SMALL: return "workspace too small";
    case LSTM_ERR_UNKNOWN_ISA: return "unknown or unsupported instruction set";
    case LSTM_ERR_INTERRUPTED: return "interrupted";
    }
    return "unknown status";
}
