// com.matteflow.DeformIm2Col on the GPU (src/infer/onnx/deform_im2col.rs has the host reference): the columns
// of a modulated deformable convolution (ONNX DeformConv, group 1, offset group 1), which a MatMul with the
// weights [Cout, C·kh·kw] then turns into the convolution's output.
//
//   cols[n, c·KK + k, p] = mask[n, k, p] · bilinear(x[n, c], oh·sh − ph + i·dh + Δy, ow·sw − pw + j·dw + Δx)
//
// then `ones_rows` rows per image (a row of ones, then zeros: the bias as one more weight column of the MatMul),
// with k = i·kw + j, p = oh·Wo + ow, (Δy, Δx) = offset[n, 2k, p], offset[n, 2k + 1, p], and the bilinear sample
// as torchvision's deform_conv2d (and ONNX's DeformConv) take it: 0 outside (−1, H) × (−1, W), each corner
// outside the map read as 0.
//
// One thread per (k, p) of one image and a run of channels: the sample's position, corners and weights (the
// mask folded in) are worked out once and used for every channel (ONNX Runtime's kernel redoes them per
// channel: 0.83 ms of BiRefNet lite's 10 for its 7×7 at 256²). Consecutive threads write consecutive p.
// Float16 in and out, float32 arithmetic. No headers (f16 through PTX conversions; NVRTC needs no include path).

__device__ __forceinline__ float di_h2f(unsigned short x) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x));
    return f;
}

__device__ __forceinline__ unsigned short di_f2h(float f) {
    unsigned short x;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(x) : "f"(f));
    return x;
}

// grid (ceil(KK·P / blockDim.x), ceil(C / cpb), N); mask may be null (no modulation).
extern "C" __global__ void deform_im2col(const unsigned short* __restrict__ x, const unsigned short* __restrict__ offset,
                                         const unsigned short* __restrict__ mask, unsigned short* __restrict__ cols,
                                         int C, int H, int W, int Ho, int Wo, int kh, int kw, int sh, int sw, int ph,
                                         int pw, int dh, int dw, int cpb, int ones_rows) {
    const int KK = kh * kw;
    const long long P = (long long)Ho * Wo;
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= KK * P) return;
    const int n = blockIdx.z;
    const int k = (int)(i / P);
    const long long p = i - (long long)k * P;
    const int oh = (int)(p / Wo), ow = (int)(p - (long long)oh * Wo);
    const int ki = k / kw, kj = k - ki * kw;
    const unsigned short* off = offset + (long long)n * 2 * KK * P;
    const float dy = di_h2f(off[(2 * k) * P + p]);
    const float dx = di_h2f(off[(2 * k + 1) * P + p]);
    const float m = mask ? di_h2f(mask[((long long)n * KK + k) * P + p]) : 1.0f;
    const float yy = (float)(oh * sh - ph + ki * dh) + dy;
    const float xx = (float)(ow * sw - pw + kj * dw) + dx;

    const int c0 = blockIdx.y * cpb;
    const int c1 = min(C, c0 + cpb);
    const long long plane = (long long)H * W;
    const long long step = (long long)KK * P;
    const long long image = ((long long)C * KK + ones_rows) * P;  // one image's rows
    if (blockIdx.y == 0 && k == 0) {  // each p of the image once: the ones rows
        unsigned short* r = cols + n * image + (long long)C * KK * P + p;
        for (int j = 0; j < ones_rows; ++j, r += P) *r = j == 0 ? 0x3c00 : 0;  // f16 1.0, 0.0
    }
    unsigned short* out = cols + n * image + (long long)c0 * step + (long long)k * P + p;
    const unsigned short* in = x + ((long long)n * C + c0) * plane;

    float w00 = 0.f, w01 = 0.f, w10 = 0.f, w11 = 0.f;
    int i00 = 0, i01 = 0, i10 = 0, i11 = 0;
    if (yy > -1.f && yy < (float)H && xx > -1.f && xx < (float)W) {
        const float fy = floorf(yy), fx = floorf(xx);
        const int y0 = (int)fy, x0 = (int)fx, y1 = y0 + 1, x1 = x0 + 1;
        const float ly = yy - fy, lx = xx - fx, hy = 1.f - ly, hx = 1.f - lx;
        const bool vy0 = y0 >= 0, vy1 = y1 <= H - 1, vx0 = x0 >= 0, vx1 = x1 <= W - 1;
        w00 = vy0 && vx0 ? hy * hx * m : 0.f;
        w01 = vy0 && vx1 ? hy * lx * m : 0.f;
        w10 = vy1 && vx0 ? ly * hx * m : 0.f;
        w11 = vy1 && vx1 ? ly * lx * m : 0.f;
        // corners outside read a clamped (in-range) pixel with weight 0
        const int ya = max(y0, 0), yb = min(y1, H - 1), xa = max(x0, 0), xb = min(x1, W - 1);
        i00 = ya * W + xa;
        i01 = ya * W + xb;
        i10 = yb * W + xa;
        i11 = yb * W + xb;
    }
    if (w00 == 0.f && w01 == 0.f && w10 == 0.f && w11 == 0.f) {
        for (int c = c0; c < c1; ++c, out += step) *out = 0;
        return;
    }
#pragma unroll 4
    for (int c = c0; c < c1; ++c, out += step, in += plane) {
        const float v = w00 * di_h2f(in[i00]) + w01 * di_h2f(in[i01]) + w10 * di_h2f(in[i10]) + w11 * di_h2f(in[i11]);
        *out = di_f2h(v);
    }
}
