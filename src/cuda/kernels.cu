// matteflow CUDA kernels, compiled at run time with NVRTC (and compile-checked in CI without a GPU).
// Each kernel mirrors a CPU stage exactly (same sampling windows, same normalisation, same integer blend), so
// the device self-test can hold them to the CPU results: ≤ 1e-5 on f32 tensors, ≤ 1/255 on 8-bit outputs.

extern "C" {

__device__ __forceinline__ float tri(float x) {
    x = fabsf(x);
    return x < 1.0f ? 1.0f - x : 0.0f;
}

// Half precision without cuda_fp16.h (NVRTC needs no include path): the PTX conversions, round to nearest even.
__device__ __forceinline__ unsigned short f32_to_f16(float v) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return h;
}
__device__ __forceinline__ float f16_to_f32(unsigned short h) {
    float v;
    asm("cvt.f32.f16 %0, %1;" : "=f"(v) : "h"(h));
    return v;
}

// ---- NV12 begin (tests/chroma.rs also compiles this part for the host and holds it to videoconvert) ----
// How to read NV12 exactly as GStreamer 1.22's videoconvert does (filled on the host: cuda::nv12::Nv12Conversion,
// whose doc says where each step comes from in GStreamer's sources).
struct Nv12 {
    int coef[5];    // R<-Y (= G<-Y = B<-Y), R<-V, B<-U, G<-U, G<-V: videoconvert's 8.8 fixed-point matrix
    int h_cosited;  // chroma on the even columns (mpeg2 siting): odd columns average their neighbours
    int v_cosited;  // chroma on the even rows: 1.22 does no vertical filter then
    int stripe;     // videoconvert's rows per thread (0: one thread); stripes starting on an even row are not
                    // interpolated vertically
};

// U, V of column x on chroma row `row` (bytes at uv), upsampled horizontally as video_chroma_up_h2{,_cs}_u8:
// 8-bit taps (3, 1) / (1, 3) between the samples, or the average of the two neighbours when cosited.
__device__ __forceinline__ void nv12_chroma_h(const unsigned char* uv, int x, int w, int cosited, int* c) {
    int k = x >> 1;
    const unsigned char* s = uv + 2 * k;
    for (int ch = 0; ch < 2; ++ch) {
        if (x == 0 || (x == w - 1 && (x & 1))) c[ch] = s[ch];
        else if (x & 1) c[ch] = cosited ? (s[ch] + s[ch + 2] + 1) >> 1 : (3 * s[ch] + s[ch + 2] + 2) >> 2;
        else c[ch] = cosited ? s[ch] : (s[ch - 2] + 3 * s[ch] + 2) >> 2;
    }
}

// videoconvert's pixel (x, y) of an NV12 frame (Y rows of `pitch` bytes, the UV plane at uv_off, same pitch):
// the chroma filtered horizontally on its two nearest chroma rows, then vertically (taps (3, 1) / (1, 3) in
// quarters, rounded), then video_orc_convert_AYUV_ARGB's arithmetic: each byte minus 128 splatted to 16 bits,
// high halves of the products, saturated. The one definition both NV12 kernels read pixels through.
__device__ __forceinline__ void nv12_pixel(const unsigned char* src, int pitch, int uv_off, int w, int h,
                                           const Nv12& n, int x, int y, int* rgb) {
    int k = y >> 1, a = k, b = k, wa = 4;
    bool even_stripe = n.stripe > 0 && y >= n.stripe && ((y / n.stripe * n.stripe) & 1) == 0;
    if (!(n.v_cosited || y == 0 || even_stripe || (y == h - 1 && (y & 1)))) {
        if (y & 1) { b = k + 1; wa = 3; }
        else { a = k - 1; wa = 1; }
    }
    int ca[2], cb[2];
    const unsigned char* uv = src + uv_off;
    nv12_chroma_h(uv + (size_t)a * pitch, x, w, n.h_cosited, ca);
    nv12_chroma_h(uv + (size_t)b * pitch, x, w, n.h_cosited, cb);
    int s[3];  // Y, U, V minus 128, each byte splatted to a signed 16-bit word
    s[0] = src[(size_t)y * pitch + x];
    s[1] = (wa * ca[0] + (4 - wa) * cb[0] + 2) >> 2;
    s[2] = (wa * ca[1] + (4 - wa) * cb[1] + 2) >> 2;
    for (int i = 0; i < 3; ++i) {
        int v = (s[i] ^ 0x80) & 0xff;
        s[i] = (short)((v << 8) | v);
    }
    int wy = (s[0] * n.coef[0]) >> 16;
    int r = wy + ((s[2] * n.coef[1]) >> 16);
    int g = wy + ((s[1] * n.coef[3]) >> 16) + ((s[2] * n.coef[4]) >> 16);
    int bl = wy + ((s[1] * n.coef[2]) >> 16);
    rgb[0] = min(max(r, -128), 127) + 128;
    rgb[1] = min(max(g, -128), 127) + 128;
    rgb[2] = min(max(bl, -128), 127) + 128;
}

// RGB (0..255, float) of source pixel (x, y). fmt 0: RGBA (or RGBx) rows of `pitch` bytes. fmt 2: BGRA / BGRx
// rows. fmt 1: NV12 read as videoconvert reads it (nv12_pixel), so the tensor is the one the CPU stages make
// from videoconvert's RGBA frame.
__device__ __forceinline__ void fetch_rgb(const unsigned char* src, int fmt, int pitch, int uv_off, const Nv12& nv,
                                          int w, int h, int x, int y, float* rgb) {
    if (fmt == 0 || fmt == 2) {
        const unsigned char* p = src + (size_t)y * pitch + (size_t)x * 4;
        int r = fmt == 0 ? 0 : 2;
        rgb[0] = p[r];
        rgb[1] = p[1];
        rgb[2] = p[2 - r];
    } else {
        int c[3];
        nv12_pixel(src, pitch, uv_off, w, h, nv, x, y, c);
        rgb[0] = (float)c[0];
        rgb[1] = (float)c[1];
        rgb[2] = (float)c[2];
    }
}

// NV12 (as NVDEC decodes into CUDA memory: pitched rows, UV plane at uv_off) → packed RGBA, alpha 255: the frame
// videoconvert would make of it, which the composite works on when decoding stays on the GPU.
__global__ void nv12_to_rgba(const unsigned char* src, int w, int h, int pitch, int uv_off, Nv12 nv,
                             unsigned char* out) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= w * h) return;
    int x = idx % w, y = idx / w;
    int rgb[3];
    nv12_pixel(src, pitch, uv_off, w, h, nv, x, y, rgb);
    unsigned char* p = out + (size_t)idx * 4;
    p[0] = (unsigned char)rgb[0];
    p[1] = (unsigned char)rgb[1];
    p[2] = (unsigned char)rgb[2];
    p[3] = 255;
}
// ---- NV12 end ----

// RGBA → I420 as videoconvert makes it for an encoder (see src/cuda/i420.rs): 8.8 fixed-point matrix per pixel,
// chroma rows averaged in pairs, then columns in pairs (chroma between them) or [1 2 1] around the even column
// (mpeg2 siting; first column c[-1] = c[0], last one [1 3]). One thread per 2×2 block; w and h even.
struct I420 {
    int coef[9];    // Y, Cb, Cr rows of R, G, B coefficients × 256
    int offset[3];  // Y, Cb, Cr offsets × 256
    int h_cosited;
    int y_stride, c_stride, u_offset, v_offset;
};

__device__ __forceinline__ int i420_component(const unsigned char* p, const I420& c, int k) {
    int s = c.coef[3 * k] * p[0] + c.coef[3 * k + 1] * p[1] + c.coef[3 * k + 2] * p[2] + c.offset[k];
    return min(max(s >> 8, 0), 255);
}

__global__ void rgba_to_i420(const unsigned char* rgba, int w, int h, I420 c, unsigned char* out) {
    int cw = w / 2, ch = h / 2;
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= cw * ch) return;
    int i = idx % cw, j = idx / cw;
    const unsigned char* r0 = rgba + (size_t)(2 * j) * w * 4;
    const unsigned char* r1 = r0 + (size_t)w * 4;
    for (int dy = 0; dy < 2; ++dy)
        for (int dx = 0; dx < 2; ++dx)
            out[(size_t)(2 * j + dy) * c.y_stride + 2 * i + dx] = (unsigned char)i420_component((dy ? r1 : r0) + (2 * i + dx) * 4, c, 0);
    for (int k = 1; k <= 2; ++k) {
        int m = (i420_component(r0 + (2 * i) * 4, c, k) + i420_component(r1 + (2 * i) * 4, c, k) + 1) >> 1;
        int r = (i420_component(r0 + (2 * i + 1) * 4, c, k) + i420_component(r1 + (2 * i + 1) * 4, c, k) + 1) >> 1;
        int v;
        if (!c.h_cosited) {
            v = (m + r + 1) >> 1;
        } else {
            int l = i == 0 ? m : (i420_component(r0 + (2 * i - 1) * 4, c, k) + i420_component(r1 + (2 * i - 1) * 4, c, k) + 1) >> 1;
            v = i == cw - 1 ? (l + 3 * m + 2) >> 2 : (l + 2 * m + r + 2) >> 2;
        }
        out[(size_t)(k == 1 ? c.u_offset : c.v_offset) + (size_t)j * c.c_stride + i] = (unsigned char)v;
    }
}

// Sampling window of output index i over an input of n pixels, exactly as the CPU resizer builds it:
// centre (i + 0.5)·scale, triangle filter widened by max(scale, 1) when antialiasing, weights normalised.
__device__ __forceinline__ void window(int i, float scale, int n, int antialias, int* lo, int* hi, float* fs,
                                       float* center) {
    float f = antialias ? fmaxf(scale, 1.0f) : 1.0f;
    float c = ((float)i + 0.5f) * scale;
    float radius = f;
    *lo = max((int)floorf(c - radius), 0);
    *hi = min((int)ceilf(c + radius), n);
    *fs = f;
    *center = c;
}

// Frame → model input tensor in one pass: resize (into the content box of a letterbox, if any), colour
// order, value = pixel·mul + add per channel, NCHW or NHWC.
// Frame → model input tensor: resize (bilinear / antialiased triangle, letterbox box cx,cy,cw,ch), colour order,
// scale/mean/std, NCHW or NHWC, written as f32 (f16 = 0) or f16 (f16 = 1: the f32 result rounded to nearest).
__global__ void preprocess(const unsigned char* src, int fmt, int w, int h, int pitch, int uv_off, Nv12 nv,
                           void* out, int f16, int mw, int mh, int cx, int cy, int cw, int ch, int antialias, int nchw,
                           int bgr, float mul0, float mul1, float mul2, float add0, float add1, float add2) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= mw * mh) return;
    int x = idx % mw, y = idx / mw;
    float mul[3] = {mul0, mul1, mul2};
    float add[3] = {add0, add1, add2};
    float v[3];
    if (x < cx || y < cy || x >= cx + cw || y >= cy + ch) {
        v[0] = add0; v[1] = add1; v[2] = add2;
    } else {
        int u = x - cx, t = y - cy;
        float sx = (float)w / (float)cw, sy = (float)h / (float)ch;
        int x0, x1, y0, y1;
        float fx, fy, cxf, cyf;
        window(u, sx, w, antialias, &x0, &x1, &fx, &cxf);
        window(t, sy, h, antialias, &y0, &y1, &fy, &cyf);
        float acc[3] = {0.f, 0.f, 0.f};
        float wsum_y = 0.f;
        for (int yy = y0; yy < y1; ++yy) {
            float wy = tri(((float)yy + 0.5f - cyf) / fy);
            if (wy == 0.f) continue;
            float row[3] = {0.f, 0.f, 0.f};
            float wsum_x = 0.f;
            for (int xx = x0; xx < x1; ++xx) {
                float wx = tri(((float)xx + 0.5f - cxf) / fx);
                if (wx == 0.f) continue;
                float p[3];
                fetch_rgb(src, fmt, pitch, uv_off, nv, w, h, xx, yy, p);
                row[0] += wx * p[0]; row[1] += wx * p[1]; row[2] += wx * p[2];
                wsum_x += wx;
            }
            acc[0] += wy * row[0] / wsum_x; acc[1] += wy * row[1] / wsum_x; acc[2] += wy * row[2] / wsum_x;
            wsum_y += wy;
        }
        for (int c = 0; c < 3; ++c) {
            int sc = bgr ? 2 - c : c;
            v[c] = acc[sc] / wsum_y * mul[c] + add[c];
        }
    }
    size_t plane = (size_t)mw * mh;
    for (int c = 0; c < 3; ++c) {
        size_t o = nchw ? c * plane + idx : (size_t)idx * 3 + c;
        if (f16) ((unsigned short*)out)[o] = f32_to_f16(v[c]);
        else ((float*)out)[o] = v[c];
    }
}

// Low-resolution mask (a crop box of it) → frame-sized 8-bit alpha, bilinear with the CPU's windows.
// sigmoid != 0 applies the logistic function to each mask value first (models that return logits), and
// values are clamped to [0, 1] before interpolation, as on the CPU.
// mask_f16: the model's output is f16 (values read as f32).
__global__ void upsample_mask(const void* mask, int mask_f16, int mw, int mh, float bx, float by, float bw, float bh,
                              unsigned char* alpha, int w, int h, int sigmoid) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= w * h) return;
    int x = idx % w, y = idx / w;
    float sx = bw / (float)w, sy = bh / (float)h;
    float fx = fmaxf(sx, 1.0f), fy = fmaxf(sy, 1.0f);
    float cxf = bx + ((float)x + 0.5f) * sx, cyf = by + ((float)y + 0.5f) * sy;
    int x0 = max((int)floorf(cxf - fx), 0), x1 = min((int)ceilf(cxf + fx), mw);
    int y0 = max((int)floorf(cyf - fy), 0), y1 = min((int)ceilf(cyf + fy), mh);
    float acc = 0.f, wsum_y = 0.f;
    for (int yy = y0; yy < y1; ++yy) {
        float wy = tri(((float)yy + 0.5f - cyf) / fy);
        if (wy == 0.f) continue;
        float row = 0.f, wsum_x = 0.f;
        for (int xx = x0; xx < x1; ++xx) {
            float wx = tri(((float)xx + 0.5f - cxf) / fx);
            if (wx == 0.f) continue;
            size_t mi = (size_t)yy * mw + xx;
            float mv = mask_f16 ? f16_to_f32(((const unsigned short*)mask)[mi]) : ((const float*)mask)[mi];
            if (sigmoid) mv = 1.0f / (1.0f + expf(-mv));
            row += wx * fminf(fmaxf(mv, 0.0f), 1.0f);
            wsum_x += wx;
        }
        acc += wy * row / wsum_x;
        wsum_y += wy;
    }
    float v = fminf(fmaxf(acc / wsum_y, 0.0f), 1.0f);
    alpha[idx] = (unsigned char)(v * 255.0f + 0.5f);
}

__device__ __forceinline__ unsigned int div255(unsigned int x) { return (x + 128 + ((x + 128) >> 8)) >> 8; }

// kind 0: alpha into the frame's A; 1: blend over `bg` (RGBA frame-sized) or the colour (r, g, b) when bg is
// null; 2: the mask as grey.
__global__ void composite(unsigned char* frame, const unsigned char* alpha, const unsigned char* bg, int n,
                          int kind, int r, int g, int b) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    unsigned char* p = frame + (size_t)i * 4;
    unsigned int a = alpha[i];
    if (kind == 0) {
        p[3] = (unsigned char)a;
    } else if (kind == 2) {
        p[0] = p[1] = p[2] = (unsigned char)a;
        p[3] = 255;
    } else {
        unsigned int na = 255 - a;
        unsigned int q[3] = {(unsigned int)r, (unsigned int)g, (unsigned int)b};
        if (bg) { q[0] = bg[(size_t)i * 4]; q[1] = bg[(size_t)i * 4 + 1]; q[2] = bg[(size_t)i * 4 + 2]; }
        for (int c = 0; c < 3; ++c) p[c] = (unsigned char)div255(p[c] * a + q[c] * na);
        p[3] = 255;
    }
}

// The CPU resizer's convolution (fast_image_resize 5, u8 pixels, adaptive kernel size), reproduced to the bit.
// One axis: output index o over n input samples, scale = n / out; the filter (box, support 0.5, or triangle,
// support 1) widened by fs = max(scale, 1); window [lo, hi); weight of input x = filter((x - centre) · (1 / fs)),
// normalised by the window's sum (doubles, as the library computes them), then fixed point: round(w · 2^prec)
// with `prec` per axis chosen on the host (cuda::resample_precision).
__device__ __forceinline__ double resample_filter(int filter, double t) {
    if (filter == 0) return (t > -0.5 && t <= 0.5) ? 1.0 : 0.0;
    t = fabs(t);
    return t < 1.0 ? 1.0 - t : 0.0;
}
struct Axis {
    int lo, hi;
    double centre, rfs, wsum;
};
__device__ __forceinline__ Axis resample_axis(int o, int n, int out, int filter) {
    Axis a;
    double scale = (double)n / (double)out;
    double f = fmax(scale, 1.0);
    double radius = (filter == 0 ? 0.5 : 1.0) * f;
    double c = ((double)o + 0.5) * scale;
    a.lo = max((int)floor(c - radius), 0);
    a.hi = min((int)ceil(c + radius), n);
    a.centre = c - 0.5;
    a.rfs = 1.0 / f;
    a.wsum = 0.0;
    for (int x = a.lo; x < a.hi; ++x) a.wsum += resample_filter(filter, ((double)x - a.centre) * a.rfs);
    return a;
}
__device__ __forceinline__ int resample_coef(const Axis& a, int filter, int x, double scale) {
    double w = resample_filter(filter, ((double)x - a.centre) * a.rfs);
    if (a.wsum != 0.0) w /= a.wsum;
    return (int)(short)round(w * scale);
}
__device__ __forceinline__ int clip8(int v, int prec) { return min(max(v >> prec, 0), 255); }

// RGBA (all four channels alike, no premultiplication) sw × sh → dw × dh with the box (filter 0) or bilinear
// (filter 1) convolution of the CPU resizer: the vertical pass first, rounded to 8 bits, then the horizontal
// (an axis whose size does not change is passed through). prec_x / prec_y: the library's fixed-point precision
// for each axis. The blurred background is a box down then a bilinear up, as in composite/background.rs.
__global__ void resample_rgba(const unsigned char* src, int sw, int sh, unsigned char* dst, int dw, int dh,
                              int filter, int prec_x, int prec_y) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= dw * dh) return;
    int x = idx % dw, y = idx / dw;
    bool need_x = sw != dw, need_y = sh != dh;
    Axis ax, ay;
    if (need_x) ax = resample_axis(x, sw, dw, filter);
    else { ax.lo = x; ax.hi = x + 1; }
    if (need_y) ay = resample_axis(y, sh, dh, filter);
    else { ay.lo = y; ay.hi = y + 1; }
    double scale_x = (double)(1 << prec_x), scale_y = (double)(1 << prec_y);
    int init_x = 1 << (prec_x - 1), init_y = 1 << (prec_y - 1);
    int acc[4] = {init_x, init_x, init_x, init_x};
    for (int xx = ax.lo; xx < ax.hi; ++xx) {
        int kx = need_x ? resample_coef(ax, filter, xx, scale_x) : 1;
        if (kx == 0) continue;
        // The vertical pass's 8-bit value at column xx.
        int col[4];
        if (need_y) {
            int s[4] = {init_y, init_y, init_y, init_y};
            for (int yy = ay.lo; yy < ay.hi; ++yy) {
                int ky = resample_coef(ay, filter, yy, scale_y);
                if (ky == 0) continue;
                const unsigned char* p = src + ((size_t)yy * sw + xx) * 4;
                for (int c = 0; c < 4; ++c) s[c] += ky * (int)p[c];
            }
            for (int c = 0; c < 4; ++c) col[c] = clip8(s[c], prec_y);
        } else {
            const unsigned char* p = src + ((size_t)y * sw + xx) * 4;
            for (int c = 0; c < 4; ++c) col[c] = p[c];
        }
        if (!need_x) {
            for (int c = 0; c < 4; ++c) dst[(size_t)idx * 4 + c] = (unsigned char)col[c];
            return;
        }
        for (int c = 0; c < 4; ++c) acc[c] += kx * col[c];
    }
    for (int c = 0; c < 4; ++c) dst[(size_t)idx * 4 + c] = (unsigned char)clip8(acc[c], prec_x);
}

// A model tensor value (f32, or f16 when f16 != 0).
__device__ __forceinline__ float ld_tensor(const void* t, int f16, size_t i) {
    return f16 ? f16_to_f32(((const unsigned short*)t)[i]) : ((const float*)t)[i];
}

// Motion, pass 1: mean over the valid part of a 5×5 box of the signed input change, per channel, in pixel
// units; |.| averaged over channels. Inputs are model tensors (NCHW or NHWC) of mw × mh, f32 or f16 (f16 != 0).
__global__ void motion_diff(const void* cur, const void* prev, int f16, int mw, int mh, int nchw, float so0,
                            float so1, float so2, float* d) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= mw * mh) return;
    int x = idx % mw, y = idx / mw;
    float so[3] = {so0, so1, so2};
    size_t plane = (size_t)mw * mh;
    float total = 0.f;
    for (int c = 0; c < 3; ++c) {
        float s = 0.f;
        int n = 0;
        for (int yy = max(y - 2, 0); yy <= min(y + 2, mh - 1); ++yy)
            for (int xx = max(x - 2, 0); xx <= min(x + 2, mw - 1); ++xx) {
                size_t k = (size_t)yy * mw + xx;
                size_t i = nchw ? c * plane + k : k * 3 + c;
                s += (ld_tensor(cur, f16, i) - ld_tensor(prev, f16, i)) * so[c] / 255.0f;
                ++n;
            }
        total += fabsf(s / (float)n) / 3.0f;
    }
    d[idx] = total;
}

// The model's output → probabilities as the CPU reads them: the logistic function first where the model gives
// logits (sigmoid != 0), clamped to [0, 1]; f32 or f16 (mask_f16 != 0) in, f32 out.
__global__ void mask_prob(const void* mask, int mask_f16, int sigmoid, int n, float* out) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = ld_tensor(mask, mask_f16, i);
    if (sigmoid) v = 1.0f / (1.0f + expf(-v));
    out[i] = fminf(fmaxf(v, 0.0f), 1.0f);
}

// Threshold remap (--threshold LO:HI), in place: (v − lo) / span, clamped to [0, 1].
__global__ void mask_threshold(float* m, int n, float lo, float span) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    m[i] = fminf(fmaxf((m[i] - lo) / span, 0.0f), 1.0f);
}

// Motion, pass 2, and the blend: spread = max(2 · 5×5 mean, own), weight = smooth · clamp(1 − spread/thr),
// out = weight · prev_mask + (1 − weight) · mask (all at the mask's resolution, equal to the model's).
__global__ void motion_blend(const float* d, int w, int h, float smooth, float thr, const float* prev_mask,
                             float* mask) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= w * h) return;
    int x = idx % w, y = idx / w;
    float s = 0.f;
    int n = 0;
    for (int yy = max(y - 2, 0); yy <= min(y + 2, h - 1); ++yy)
        for (int xx = max(x - 2, 0); xx <= min(x + 2, w - 1); ++xx) { s += d[(size_t)yy * w + xx]; ++n; }
    float m = fmaxf(2.0f * s / (float)n, d[idx]);
    float still = fminf(fmaxf(1.0f - m / thr, 0.0f), 1.0f);
    float wgt = smooth * still;
    mask[idx] = wgt * prev_mask[idx] + (1.0f - wgt) * mask[idx];
}

}  // extern "C"
