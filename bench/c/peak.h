/* bench/c/peak.c as a library: this core's single-thread peak. */
#ifndef PEAK_H
#define PEAK_H
#include <stddef.h>
typedef struct {
    char cpu[128], isa[8];
    double f32_fma, f32_nofma, f64_fma, f64_nofma;   /* GFLOP/s */
    double ghz;                                      /* clock estimate (0: unknown) */
} peak_t;
void peak_measure(peak_t *p);            /* all fields */
void peak_measure_cpu_name(peak_t *p);   /* only cpu, the rest zero */
void peak_json(const peak_t *p, char *buf, size_t n);
#endif
