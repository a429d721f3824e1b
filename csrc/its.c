/*
 * Interrupt delivery helpers: one bit of an LPI pending table in memory, and a
 * batch of LPIs made pending at once.
 *
 * A GICv3 pending table is one bit per INTID in memory.  Setting or clearing a
 * bit is a read-modify-write of its byte through the ordinary memory write (so
 * the page is made on first touch, as a byte write would make it); the old bit
 * is returned so that a caller needs one call, not a read and a write.
 */
#include <errno.h>

#include "internal.h"

int pymsi_mem_bit(pymsi_mem *m, uint64_t addr, unsigned bit, int op)
{
    if (bit > 7 || op < PYMSI_BIT_READ || op > PYMSI_BIT_CLEAR)
        return -EINVAL;
    if (!pymsi_mem_is_ram(m, addr, 1))
        return -EFAULT;
    const uint8_t *page = pymsi_mem_page(m, addr >> PYMSI_PAGE_SHIFT);
    uint8_t byte = page ? page[addr & PYMSI_PAGE_MASK] : 0;
    uint8_t mask = (uint8_t)(1u << bit);
    int old = (byte & mask) != 0;
    if (op == PYMSI_BIT_READ)
        return old;
    byte = op == PYMSI_BIT_SET ? (uint8_t)(byte | mask) : (uint8_t)(byte & ~mask);
    int rc = pymsi_mem_write(m, addr, &byte, 1);
    return rc < 0 ? rc : old;
}

long pymsi_pending_batch(pymsi_mem *m, const uint64_t *tables, const uint32_t *intids,
                         size_t n, int32_t *old)
{
    long ok = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t intid = intids[i];
        uint64_t addr = tables[i] + (intid >> 3);
        if (addr < tables[i]) {               /* wrapped past 2^64: nothing there */
            old[i] = -EFAULT;
            continue;
        }
        int r = pymsi_mem_bit(m, addr, intid & 7, PYMSI_BIT_SET);
        old[i] = r;
        if (r >= 0)
            ok++;
    }
    return ok;
}
