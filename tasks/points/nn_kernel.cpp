// Exact nearest neighbours in both directions between two batches of 3D clouds (CPU, no gradients).
//
// For every cloud b: x_to_y[b, i] = argmin_j |x_i - y_j|^2 and y_to_x[b, j] = argmin_i |x_i - y_j|^2,
// ties to the first index, as torch.argmin. Squared distances are summed in the order
// ((dx*dx + dy*dy) + dz*dz) without fused multiply-adds (compiled with -ffp-contract=off), the
// rounding of the torch brute force. One row of distances (Q values) is computed at a time into a
// buffer that stays in L1/L2, then read twice: running column minima, and the row minimum. Clouds
// are spread over threads (at::parallel_for); nothing of size P x Q is ever stored.
//
// Shapes: x [B, P, 3], y [B, Q, 3] contiguous, float32 or float64; returns int64 [B, P] and [B, Q].

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <limits>
#include <vector>

namespace {

template <typename T>
void one_cloud(const T* x, const T* y, int64_t p, int64_t q, int64_t* x_to_y, int64_t* y_to_x) {
  std::vector<T> y0(q), y1(q), y2(q), row(q), col_best(q, std::numeric_limits<T>::infinity());
  for (int64_t j = 0; j < q; ++j) {  // structure of arrays: the distance loop vectorises
    y0[j] = y[3 * j];
    y1[j] = y[3 * j + 1];
    y2[j] = y[3 * j + 2];
    y_to_x[j] = 0;
  }
  T* __restrict r = row.data();
  T* __restrict cb = col_best.data();
  int64_t* __restrict ya = y_to_x;
  for (int64_t i = 0; i < p; ++i) {
    const T a = x[3 * i], b = x[3 * i + 1], c = x[3 * i + 2];
    for (int64_t j = 0; j < q; ++j) {
      const T d0 = a - y0[j], d1 = b - y1[j], d2 = c - y2[j];
      r[j] = (d0 * d0 + d1 * d1) + d2 * d2;
    }
    for (int64_t j = 0; j < q; ++j) {  // strict: an earlier i keeps a tie
      const bool closer = r[j] < cb[j];
      cb[j] = closer ? r[j] : cb[j];
      ya[j] = closer ? i : ya[j];
    }
    constexpr int L = 16;  // independent partial minima: a vectorisable reduction
    T part[L];
    for (int k = 0; k < L; ++k) part[k] = std::numeric_limits<T>::infinity();
    int64_t j = 0;
    for (; j + L <= q; j += L)
      for (int k = 0; k < L; ++k) part[k] = r[j + k] < part[k] ? r[j + k] : part[k];
    T best = std::numeric_limits<T>::infinity();
    for (; j < q; ++j) best = r[j] < best ? r[j] : best;
    for (int k = 0; k < L; ++k) best = part[k] < best ? part[k] : best;
    int64_t arg = 0;
    while (arg < q - 1 && !(r[arg] == best)) ++arg;  // the first index holding the minimum
    x_to_y[i] = arg;
  }
}

}  // namespace

std::vector<torch::Tensor> nearest(torch::Tensor x, torch::Tensor y) {
  TORCH_CHECK(x.dim() == 3 && y.dim() == 3 && x.size(2) == 3 && y.size(2) == 3 && x.size(0) == y.size(0),
              "nearest expects x [B, P, 3] and y [B, Q, 3]");
  TORCH_CHECK(!x.is_cuda() && !y.is_cuda() && x.scalar_type() == y.scalar_type(), "nearest: CPU tensors of one dtype");
  x = x.contiguous();
  y = y.contiguous();
  const int64_t b = x.size(0), p = x.size(1), q = y.size(1);
  auto x_to_y = torch::zeros({b, p}, x.options().dtype(torch::kLong));
  auto y_to_x = torch::zeros({b, q}, x.options().dtype(torch::kLong));
  if (p == 0 || q == 0) return {x_to_y, y_to_x};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "nearest", [&] {
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* yp = y.data_ptr<scalar_t>();
    int64_t* xy = x_to_y.data_ptr<int64_t>();
    int64_t* yx = y_to_x.data_ptr<int64_t>();
    at::parallel_for(0, b, 1, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k)
        one_cloud<scalar_t>(xp + k * p * 3, yp + k * q * 3, p, q, xy + k * p, yx + k * q);
    });
  });
  return {x_to_y, y_to_x};
}
