/* vbytes.h: MG_VBYTES, the bytes of one vector register of the target this
 * translation unit is compiled for (after any `#pragma GCC target`, see
 * isa.h): 64 with AVX-512, 32 with AVX, 16 with SSE2 or NEON, else 16
 * (plain scalar code the compiler may vectorise).  -DMG_VBYTES=N overrides
 * it.  No include guard on the definition: each kernel translation unit has
 * one target. */
#ifndef MG_VBYTES
#if defined(__AVX512F__)
#define MG_VBYTES 64
#elif defined(__AVX__)
#define MG_VBYTES 32
#else
#define MG_VBYTES 16
#endif
#endif
