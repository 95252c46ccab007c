/* Stacks through frameless libc code, for the unwinding tests (tests/tests/unwind.rs).
 *   stacks sleep   main -> sleep_a_lot -> nanosleep, 100 x 10 ms
 *   stacks qsort   main -> sort_many -> qsort -> compare (a libc callback) -> burn_cpu, 0.5 s of CPU time
 *   stacks inline  main -> hot_inlined (always inlined into main), 0.5 s of CPU time
 * Built both with and without frame pointers by the tests. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static volatile unsigned long sink;

__attribute__((noinline)) void burn_cpu(unsigned long n) {
    unsigned long x = sink;
    for (unsigned long i = 0; i < n; i++)
        x = x * 6364136223846793005UL + 1442695040888963407UL;
    sink = x;
}

__attribute__((noinline)) int compare(const void *a, const void *b) {
    burn_cpu(2000);
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

__attribute__((noinline)) void sort_many(double seconds) {
    int v[64];
    struct timespec t0, t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t0);
    do {
        for (int i = 0; i < 64; i++)
            v[i] = (i * 7919) % 64;
        qsort(v, 64, sizeof v[0], compare);
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    } while ((t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9 < seconds);
}

__attribute__((noinline)) void sleep_a_lot(void) {
    struct timespec ten_ms = {0, 10 * 1000 * 1000};
    for (int i = 0; i < 100; i++)
        nanosleep(&ten_ms, NULL);
}

static inline __attribute__((always_inline)) void hot_inlined(double seconds) {
    struct timespec t0, t;
    unsigned long x = sink;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t0);
    do {
        for (int i = 0; i < 100000; i++)
            x = x * 6364136223846793005UL + 1442695040888963407UL;
        sink = x;
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    } while ((t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9 < seconds);
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "sleep") == 0)
        sleep_a_lot();
    else if (argc > 1 && strcmp(argv[1], "qsort") == 0)
        sort_many(0.5);
    else if (argc > 1 && strcmp(argv[1], "inline") == 0)
        hot_inlined(0.5);
    else {
        fprintf(stderr, "usage: stacks sleep|qsort|inline\n");
        return 2;
    }
    return 0;
}
