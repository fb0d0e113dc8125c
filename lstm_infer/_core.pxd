# Declarations mirroring src/lstm_infer.h (the one contract): every status,
# cell kind and limit by name.
from libc.stdint cimport int32_t, int64_t

cdef extern from "lstm_infer.h" nogil:
    ctypedef enum lstm_status:
        LSTM_OK
        LSTM_ERR_INVALID_ARGUMENT
        LSTM_ERR_OUT_OF_MEMORY
        LSTM_ERR_SIZE_OVERFLOW
        LSTM_ERR_WORKSPACE_TOO_SMALL
        LSTM_ERR_UNKNOWN_ISA
        LSTM_ERR_INTERRUPTED
        LSTM_ERR_IO
        LSTM_ERR_BAD_FILE
        LSTM_ERR_UNSUPPORTED
    const char *lstm_status_string(lstm_status status)

    enum:
        LSTM_MAX_FEATURES
        LSTM_MAX_LAYERS
        LSTM_MAX_THREADS

    ctypedef enum lstm_cell_kind:
        LSTM_CELL_LSTM
        LSTM_CELL_GRU
        LSTM_CELL_RNN_TANH
        LSTM_CELL_RNN_RELU

    ctypedef enum lstm_weight_type:
        LSTM_WEIGHTS_F32
        LSTM_WEIGHTS_F16
        LSTM_WEIGHTS_I8
    enum:
        LSTM_MAX_I8_STATE

    ctypedef struct lstm_config:
        int32_t input_size
        int32_t hidden_size
        int32_t num_layers
        int32_t bias
        int32_t bidirectional
        int32_t proj_size
        int32_t cell
        int32_t weights
    ctypedef struct lstm_model:
        pass
    size_t lstm_weight_count(const lstm_config *cfg)
    lstm_status lstm_weight_shape(const lstm_config *cfg, size_t index, int64_t *shape)
    int32_t lstm_weight_storage(const lstm_config *cfg, size_t index)
    lstm_status lstm_model_create(const lstm_config *cfg, const float *const *weights,
                                  size_t n_weights, lstm_model **out)
    lstm_status lstm_reduce_weight(int32_t type, const float *src, int64_t rows, int64_t cols,
                                   void *dst, float *scales)
    lstm_status lstm_model_create_reduced(const lstm_config *cfg, const void *const *weights,
                                          const float *const *scales, size_t n_weights,
                                          lstm_model **out)
    void lstm_model_free(lstm_model *model)
    void lstm_model_release_memory(lstm_model *model)
    ctypedef struct lstm_dense:
        pass
    lstm_status lstm_dense_create(int64_t in_features, int64_t out_features, const float *weight,
                                  const float *bias, lstm_dense **out)
    lstm_status lstm_dense_forward(const lstm_dense *dense, int64_t rows, const float *x,
                                   int64_t x_stride, float *y, int64_t y_stride)
    void lstm_dense_free(lstm_dense *dense)
    ctypedef struct lstm_forward_args:
        int64_t seq_len, batch
        const float *input
        int64_t input_stride_t, input_stride_b
        const int64_t *lengths
        const float *h_0
        const float *c_0
        float *output
        int64_t output_stride_t, output_stride_b
        float *h_n
        float *c_n
        int (*interrupt)(void *ctx) noexcept nogil
        void *interrupt_ctx
    lstm_status lstm_workspace_size(const lstm_model *model, int64_t seq_len, int64_t batch,
                                    const int64_t *lengths, size_t *bytes)
    lstm_status lstm_model_forward(const lstm_model *model, const lstm_forward_args *args,
                                   void *workspace, size_t workspace_size)
    void lstm_set_num_threads(int n)
    int lstm_get_num_threads()
    const char *lstm_get_isa()
    lstm_status lstm_set_isa(const char *name)
