/* C11-style atomics for the shared-memory rings (DESIGN §3).
 *
 * Cython cannot spell memory orders, so the ring calls these inline helpers.
 * The gcc __atomic builtins compile to plain moves on x86-64 for acquire /
 * release and to an mfence for the seq_cst fence the wakeup protocol needs.
 */
#ifndef MKIPC_ATOMICS_H
#define MKIPC_ATOMICS_H
#include <stdint.h>
#include <sched.h>

static inline uint64_t mk_load_acquire_u64(const volatile uint64_t *p) {
    return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
static inline void mk_store_release_u64(volatile uint64_t *p, uint64_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELEASE);
}
static inline uint32_t mk_load_u32(const volatile uint32_t *p) {
    return __atomic_load_n(p, __ATOMIC_SEQ_CST);
}
static inline void mk_store_u32(volatile uint32_t *p, uint32_t v) {
    __atomic_store_n(p, v, __ATOMIC_SEQ_CST);
}
static inline uint32_t mk_exchange_u32(volatile uint32_t *p, uint32_t v) {
    return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST);
}
static inline int mk_cas_u64(volatile uint64_t *p, uint64_t expected, uint64_t desired) {
    return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_SEQ_CST,
                                       __ATOMIC_SEQ_CST);
}
static inline void mk_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

static inline void mk_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}
static inline void mk_yield(void) { sched_yield(); }
#endif
