# The kernels of the C core on NumPy arrays (float64 or float32), for tests;
# included into _core.pyx and re-exported by microgpt_c._kernels.
#
# Arrays are typed memoryviews: those marked OUT are written (forward) or
# accumulated into (backward, ``+=``), those marked IN are read.  Shapes are
# checked before the C call and the GIL is released around it.

from cython cimport floating

# the named variants of the ops (csrc/common.h)
VARIANTS = {"matmul": (0, {"auto": -1, "token_lanes": 0, "wT": 1, "gemm": 2}),
            "attention": (1, {"auto": -1, "rows": 0, "query_lanes": 1, "channel_lanes": 2}),
            "adam": (2, {"auto": -1, "plain": 0, "quiet": 1})}


def force_variant(str op, str variant):
    """Force the variant of an op where it applies ("auto" restores the
    rule): for tests and benchmarks; process-wide."""
    if op not in VARIANTS or variant not in VARIANTS[op][1]:
        raise ValueError(f"unknown op/variant {op!r}/{variant!r}; known: "
                         f"{ {k: sorted(v[1]) for k, v in VARIANTS.items()} }")
    check(mg_force_variant(VARIANTS[op][0], VARIANTS[op][1][variant]), "force_variant")


def fp_env():
    """The calling thread's floating-point control word (MXCSR on x86-64,
    FPCR on aarch64; 0 elsewhere), for tests."""
    return mg_fp_env()


def set_fp_env(unsigned long state):
    """Set the calling thread's floating-point control word (tests only)."""
    mg_fp_env_set(state)


def team_fp_envs():
    """Each OpenMP team thread's floating-point control word (tests only)."""
    cdef unsigned long out[256]
    cdef int n = mg_fp_team_envs(out, 256)
    return [out[i] for i in range(min(n, 256))]


def attention_variant(int N, int p0, int C, int NH):
    """The attention variant that runs for N queries at positions p0.. of
    width C with NH heads (float64 lanes; the rule of csrc/ops/attention.h)."""
    names = {v: k for k, v in VARIANTS["attention"][1].items()}
    return names[attention_variant_f64(N, p0, C, NH)]


cdef int kneed(bint ok, str message) except -1:
    if not ok:
        raise ValueError(message)
    return 0


cdef int same_shape(tuple got, tuple want, str name) except -1:
    return kneed(got == want, f"{name} has shape {got}, expected {want}")


cdef tuple shape2(floating[:, ::1] a):
    return (a.shape[0], a.shape[1])


def encoder_forward(floating[:, ::1] out,        # OUT (N, C)
                    const int32_t[::1] inp,      # IN  (N)
                    const int32_t[::1] pos,      # IN  (N)
                    const floating[:, ::1] wte,  # IN  (V, C)
                    const floating[:, ::1] wpe): # IN  (T, C)
    cdef int N = out.shape[0], C = out.shape[1], i
    same_shape((inp.shape[0], pos.shape[0]), (N, N), "inp/pos")
    kneed(wte.shape[1] == C and wpe.shape[1] == C, "wte/wpe must have C columns")
    for i in range(N):
        kneed(0 <= inp[i] < wte.shape[0] and 0 <= pos[i] < wpe.shape[0], "index out of range")
    with nogil:
        if floating is double:
            encoder_forward_f64(&out[0, 0], &inp[0], &pos[0], &wte[0, 0], &wpe[0, 0], N, C)
        else:
            encoder_forward_f32(&out[0, 0], &inp[0], &pos[0], &wte[0, 0], &wpe[0, 0], N, C)


def encoder_backward(floating[:, ::1] dwte,       # OUT (V, C) accumulated
                     floating[:, ::1] dwpe,       # OUT (T, C) accumulated
                     const floating[:, ::1] dout, # IN  (N, C)
                     const int32_t[::1] inp,      # IN  (N)
                     const int32_t[::1] pos):     # IN  (N)
    cdef int N = dout.shape[0], C = dout.shape[1], i
    same_shape((inp.shape[0], pos.shape[0]), (N, N), "inp/pos")
    kneed(dwte.shape[1] == C and dwpe.shape[1] == C, "dwte/dwpe must have C columns")
    for i in range(N):
        kneed(0 <= inp[i] < dwte.shape[0] and 0 <= pos[i] < dwpe.shape[0], "index out of range")
    with nogil:
        if floating is double:
            encoder_backward_f64(&dwte[0, 0], &dwpe[0, 0], &dout[0, 0], &inp[0], &pos[0], N, C)
        else:
            encoder_backward_f32(&dwte[0, 0], &dwpe[0, 0], &dout[0, 0], &inp[0], &pos[0], N, C)


def rmsnorm_forward(floating[:, ::1] out,        # OUT (N, C)
                    floating[::1] scale,         # OUT (N)
                    const floating[:, ::1] inp): # IN  (N, C)
    cdef int N = inp.shape[0], C = inp.shape[1]
    same_shape(shape2(out), (N, C), "out")
    kneed(scale.shape[0] == N, "scale must have N elements")
    with nogil:
        if floating is double:
            rmsnorm_forward_f64(&out[0, 0], &scale[0], &inp[0, 0], N, C)
        else:
            rmsnorm_forward_f32(&out[0, 0], &scale[0], &inp[0, 0], N, C)


def rmsnorm_backward(floating[:, ::1] dinp,         # OUT (N, C) accumulated
                     const floating[:, ::1] dout,   # IN  (N, C)
                     const floating[:, ::1] inp,    # IN  (N, C)
                     const floating[::1] scale):    # IN  (N)
    cdef int N = inp.shape[0], C = inp.shape[1]
    same_shape(shape2(dinp), (N, C), "dinp")
    kneed(dout.shape[0] == N and dout.shape[1] == C, "dout must be (N, C)")
    kneed(scale.shape[0] == N, "scale must have N elements")
    with nogil:
        if floating is double:
            rmsnorm_backward_f64(&dinp[0, 0], &dout[0, 0], &inp[0, 0], &scale[0], N, C)
        else:
            rmsnorm_backward_f32(&dinp[0, 0], &dout[0, 0], &inp[0, 0], &scale[0], N, C)


def matmul_forward(floating[:, ::1] out,           # OUT (N, OC)
                   const floating[:, ::1] inp,     # IN  (N, C)
                   const floating[:, ::1] weight): # IN  (OC, C)
    cdef int N = inp.shape[0], C = inp.shape[1], OC = weight.shape[0]
    kneed(weight.shape[1] == C, "weight must be (OC, C)")
    same_shape(shape2(out), (N, OC), "out")
    with nogil:
        if floating is double:
            matmul_forward_f64(&out[0, 0], &inp[0, 0], &weight[0, 0], N, C, OC)
        else:
            matmul_forward_f32(&out[0, 0], &inp[0, 0], &weight[0, 0], N, C, OC)


def matmul_backward(floating[:, ::1] dinp,           # OUT (N, C) accumulated
                    floating[:, ::1] dweight,        # OUT (OC, C) accumulated
                    const floating[:, ::1] dout,     # IN  (N, OC)
                    const floating[:, ::1] inp,      # IN  (N, C)
                    const floating[:, ::1] weight):  # IN  (OC, C)
    cdef int N = inp.shape[0], C = inp.shape[1], OC = weight.shape[0]
    kneed(weight.shape[1] == C, "weight must be (OC, C)")
    same_shape(shape2(dinp), (N, C), "dinp")
    same_shape(shape2(dweight), (OC, C), "dweight")
    kneed(dout.shape[0] == N and dout.shape[1] == OC, "dout must be (N, OC)")
    with nogil:
        if floating is double:
            matmul_backward_f64(&dinp[0, 0], &dweight[0, 0], &dout[0, 0], &inp[0, 0],
                                &weight[0, 0], N, C, OC)
        else:
            matmul_backward_f32(&dinp[0, 0], &dweight[0, 0], &dout[0, 0], &inp[0, 0],
                                &weight[0, 0], N, C, OC)


def attention_forward(floating[:, ::1] out,       # OUT (N, C)
                      floating[:, :, ::1] att,    # OUT (N, NH, T) softmax weights
                      const floating[:, ::1] q,   # IN  (N, C)
                      const floating[:, ::1] k,   # IN  (p0 + N, C)
                      const floating[:, ::1] v,   # IN  (p0 + N, C)
                      int p0=0):
    cdef int N = q.shape[0], C = q.shape[1], NH = att.shape[1], T = att.shape[2]
    kneed(NH >= 1 and C % NH == 0, "att.shape[1] (n_head) must divide C")
    kneed(p0 >= 0 and p0 + N <= T, "positions must fit in att.shape[2] (T)")
    kneed(k.shape[0] >= p0 + N and v.shape[0] >= p0 + N and k.shape[1] == C and v.shape[1] == C,
         "k and v must be (p0 + N, C)")
    same_shape(shape2(out), (N, C), "out")
    kneed(att.shape[0] == N, "att must be (N, NH, T)")
    with nogil:
        if floating is double:
            attention_forward_f64(&out[0, 0], &att[0, 0, 0], &q[0, 0], &k[0, 0], &v[0, 0],
                                  N, p0, C, NH, T)
        else:
            attention_forward_f32(&out[0, 0], &att[0, 0, 0], &q[0, 0], &k[0, 0], &v[0, 0],
                                  N, p0, C, NH, T)


def attention_backward(floating[:, ::1] dq,          # OUT (N, C) accumulated
                       floating[:, ::1] dk,          # OUT (N, C) accumulated
                       floating[:, ::1] dv,          # OUT (N, C) accumulated
                       const floating[:, ::1] dout,  # IN  (N, C)
                       const floating[:, :, ::1] att,# IN  (N, NH, T)
                       const floating[:, ::1] q,     # IN  (N, C)
                       const floating[:, ::1] k,     # IN  (N, C)
                       const floating[:, ::1] v):    # IN  (N, C)
    cdef int N = q.shape[0], C = q.shape[1], NH = att.shape[1], T = att.shape[2]
    kneed(NH >= 1 and C % NH == 0 and att.shape[0] == N and N <= T, "att must be (N, NH, T)")
    for name, a in (("dq", dq), ("dk", dk), ("dv", dv), ("dout", dout), ("k", k), ("v", v)):
        kneed(a.shape[0] == N and a.shape[1] == C, f"{name} must be (N, C)")
    datt_arr = np.zeros((N, NH, T), dtype=np.float64 if floating is double else np.float32)
    cdef floating[:, :, ::1] datt = datt_arr
    with nogil:
        if floating is double:
            attention_backward_f64(&dq[0, 0], &dk[0, 0], &dv[0, 0], &datt[0, 0, 0], &dout[0, 0],
                                   &att[0, 0, 0], &q[0, 0], &k[0, 0], &v[0, 0], N, C, NH, T)
        else:
            attention_backward_f32(&dq[0, 0], &dk[0, 0], &dv[0, 0], &datt[0, 0, 0], &dout[0, 0],
                                   &att[0, 0, 0], &q[0, 0], &k[0, 0], &v[0, 0], N, C, NH, T)


def relu_forward(floating[::1] out, const floating[::1] inp):          # OUT, IN (n)
    kneed(out.shape[0] == inp.shape[0], "out and inp must have the same size")
    with nogil:
        if floating is double:
            relu_forward_f64(&out[0], &inp[0], inp.shape[0])
        else:
            relu_forward_f32(&out[0], &inp[0], inp.shape[0])


def relu_backward(floating[::1] dinp, const floating[::1] dout, const floating[::1] inp):
    kneed(dinp.shape[0] == inp.shape[0] == dout.shape[0], "arrays must have the same size")
    with nogil:
        if floating is double:
            relu_backward_f64(&dinp[0], &dout[0], &inp[0], inp.shape[0])
        else:
            relu_backward_f32(&dinp[0], &dout[0], &inp[0], inp.shape[0])


def residual_forward(floating[::1] out, const floating[::1] inp1, const floating[::1] inp2):
    kneed(out.shape[0] == inp1.shape[0] == inp2.shape[0], "arrays must have the same size")
    with nogil:
        if floating is double:
            residual_forward_f64(&out[0], &inp1[0], &inp2[0], out.shape[0])
        else:
            residual_forward_f32(&out[0], &inp1[0], &inp2[0], out.shape[0])


def residual_backward(floating[::1] dinp1, floating[::1] dinp2, const floating[::1] dout):
    kneed(dinp1.shape[0] == dinp2.shape[0] == dout.shape[0], "arrays must have the same size")
    with nogil:
        if floating is double:
            residual_backward_f64(&dinp1[0], &dinp2[0], &dout[0], dout.shape[0])
        else:
            residual_backward_f32(&dinp1[0], &dinp2[0], &dout[0], dout.shape[0])


def crossentropy_softmax_forward(floating[::1] losses,          # OUT (N)
                                 floating[:, ::1] probs,        # OUT (N, V)
                                 const floating[:, ::1] logits, # IN  (N, V)
                                 const int32_t[::1] targets):   # IN  (N)
    cdef int N = logits.shape[0], V = logits.shape[1], i
    same_shape(shape2(probs), (N, V), "probs")
    kneed(losses.shape[0] == N and targets.shape[0] == N, "losses/targets must have N elements")
    for i in range(N):
        kneed(0 <= targets[i] < V, "target out of range")
    with nogil:
        if floating is double:
            crossentropy_softmax_forward_f64(&losses[0], &probs[0, 0], &logits[0, 0], &targets[0], N, V)
        else:
            crossentropy_softmax_forward_f32(&losses[0], &probs[0, 0], &logits[0, 0], &targets[0], N, V)


def crossentropy_softmax_backward(floating[:, ::1] dlogits,      # OUT (N, V) accumulated
                                  const floating[::1] dlosses,   # IN  (N)
                                  const floating[:, ::1] probs,  # IN  (N, V)
                                  const int32_t[::1] targets):   # IN  (N)
    cdef int N = probs.shape[0], V = probs.shape[1], i
    same_shape(shape2(dlogits), (N, V), "dlogits")
    kneed(dlosses.shape[0] == N and targets.shape[0] == N, "dlosses/targets must have N elements")
    for i in range(N):
        kneed(0 <= targets[i] < V, "target out of range")
    with nogil:
        if floating is double:
            crossentropy_softmax_backward_f64(&dlogits[0, 0], &dlosses[0], &probs[0, 0], &targets[0], N, V)
        else:
            crossentropy_softmax_backward_f32(&dlogits[0, 0], &dlosses[0], &probs[0, 0], &targets[0], N, V)


def adam_update(floating[::1] params, floating[::1] m, floating[::1] v,   # OUT (n) each
                const floating[::1] grads,                               # IN  (n)
                double lr_t, double beta1, double beta2, double eps, long t):
    cdef size_t n = params.shape[0]
    kneed(m.shape[0] == n and v.shape[0] == n and grads.shape[0] == n, "arrays must have the same size")
    kneed(t >= 1, "t is the 1-based step")
    with nogil:
        if floating is double:
            adam_update_f64(&params[0], &m[0], &v[0], &grads[0], n, lr_t, beta1, beta2, eps, t)
        else:
            adam_update_f32(&params[0], &m[0], &v[0], &grads[0], n, lr_t, beta1, beta2, eps, t)
