// Shared helpers of the fused CPU kernels: raw-buffer access, argument checks and
// the fixed work partition that keeps every reduction deterministic.
#pragma once

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace fbnet {

// Bumped whenever a kernel's signature or semantics change; fbnet_fast/_ext.py refuses
// a module built from other sources (a stale in-place build) and says how to rebuild.
constexpr int kAbiVersion = 2;

using buf_t = std::uintptr_t;  // a tensor's data_ptr(), passed from Python

inline float* F(buf_t p) { return reinterpret_cast<float*>(p); }
inline const float* CF(buf_t p) { return reinterpret_cast<const float*>(p); }

inline void check(bool ok, const std::string& msg) {
  if (!ok) throw std::invalid_argument(msg);
}

inline void check_buf(buf_t p, const char* name, bool optional = false) {
  if (optional && p == 0) return;
  check(p != 0, std::string(name) + " must be a non-null float32 buffer");
  check(p % alignof(float) == 0, std::string(name) + " must be aligned to 4 bytes (a float32 buffer)");
}

inline void check_positive(int64_t v, const char* name) {
  check(v > 0, std::string(name) + " must be > 0, got " + std::to_string(v));
}

// Rows per work chunk so that a chunk holds about `target` elements. The partition
// depends on the shape only, never on the thread count: each chunk writes its own
// partial sums and the partials are added in chunk order, so a reduction gives the
// same bits for any OMP_NUM_THREADS (no float atomics).
inline int64_t rows_per_chunk(int64_t row_elems, int64_t target = 1 << 16) {
  return std::max<int64_t>(1, (target + row_elems - 1) / std::max<int64_t>(1, row_elems));
}

}  // namespace fbnet
