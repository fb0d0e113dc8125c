# Declarations mirroring src/lstm_infer.h.
from libc.stdint cimport int32_t, int64_t

cdef extern from "lstm_infer.h" nogil:
    ctypedef enum lstm_status:
        LSTM_OK
    const char *lstm_status_string(lstm_status status)
    ctypedef struct lstm_config:
        int32_t input_size
        int32_t hidden_size
        int32_t num_layers
        int32_t bias
        int32_t bidirectional
        int32_t proj_size
    ctypedef struct lstm_model:
        pass
    size_t lstm_weight_count(const lstm_config *cfg)
    lstm_status lstm_model_create(const lstm_config *cfg, const float *const *weights,
                                  size_t n_weights, lstm_model **out)
    void lstm_model_free(lstm_model *model)
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
    lstm_status lstm_model_forward(const lstm_model *model, const lstm_forward_args *args,
                                   void *workspace, size_t workspace_size)
    void lstm_set_num_threads(int n)
    int lstm_get_num_threads()
    const char *lstm_get_isa()
    lstm_status lstm_set_isa(const char *name)
