// Scalar conversion of one cached K/V row between fp32 and its storage dtype (used on writes,
// context shifts and by the ref attention tier).
#pragma once
#include <cstdint>

#include "xsil/params.h"

namespace xsil {
void kv_store_row(KVDtype dt, const float* x, uint8_t* dst, int64_t head_dim);
void kv_load_row(KVDtype dt, const uint8_t* src, float* out, int64_t head_dim);
}  // namespace xsil
