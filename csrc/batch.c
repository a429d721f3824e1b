/*
 * Batch entry points: many translations, or many MSI composes followed by the
 * translation of the composed address (the device's MSI write), in one call
 * over caller-owned arrays.  Nothing is allocated; the configuration is
 * checked once per call.
 */
#include <errno.h>

#include "internal.h"

long pymsi_translate_batch(const pymsi_mem *m, pymsi_tlb *tlb,
                           const struct pymsi_xlate_cfg *cfg, int write,
                           const uint64_t *iova, size_t n,
                           uint64_t *out_pa, int32_t *status)
{
    int rc = pymsi_cfg_check(cfg);
    if (rc)
        return rc;
    long ok = 0;
    struct pymsi_result r;
    for (size_t k = 0; k < n; k++) {
        pymsi_translate_nocheck(m, tlb, cfg, iova[k], write, &r);
        out_pa[k] = r.pa;
        status[k] = pymsi_status_of(&r);
        ok += status[k] == 0;
    }
    return ok;
}

long pymsi_msi_batch(const pymsi_msi_table *t, const pymsi_mem *m, pymsi_tlb *tlb,
                     const struct pymsi_xlate_cfg *cfg, uint64_t doorbell_pa,
                     const uint32_t *devs, const uint32_t *idx, size_t n,
                     uint64_t *out_addr, uint64_t *out_pa, int32_t *status)
{
    int rc = pymsi_cfg_check(cfg);
    if (rc)
        return rc;
    long ok = pymsi_compose_batch(t, doorbell_pa, devs, idx, n, out_addr, status);
    struct pymsi_result r;
    for (size_t k = 0; k < n; k++) {
        if (status[k]) {
            out_pa[k] = 0;
            continue;
        }
        /* An MSI is a 32-bit write of the data to the composed address. */
        pymsi_translate_nocheck(m, tlb, cfg, out_addr[k], 1, &r);
        out_pa[k] = r.pa;
        status[k] = pymsi_status_of(&r);
        ok -= status[k] != 0;
    }
    return ok;
}
