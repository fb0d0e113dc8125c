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
    case LSTM_ERR_IO: return "the model file could not be read";
    case LSTM_ERR_BAD_FILE: return "not a valid lstm_infer model file";
    case LSTM_ERR_UNSUPPORTED: return "model file of a kind or format version this library does not read";
    }
    return "unknown status";
}
