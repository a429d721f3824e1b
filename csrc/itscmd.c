/*
 * The ITS command queue: the commands whose effects are table writes and checks
 * (MAPD, MAPC, MAPTI, MAPI, SYNC, INV, INVALL), run in C from the read pointer
 * to the write pointer, in the model's table formats.  Command fields, table
 * entries, opcodes and error codes are those of formats.h, generated from
 * pymsi/core/gic_formats.py (the one definition the ITS model, its driver and
 * KVM's vITS use too).
 *
 * Every table and queue access goes through the memory's range-checked
 * accessors; a failed one stops the run as the model's memory error (stall).
 * The checks and their order are those of the model's Python handlers, so the
 * same command stream gives the same tables, errors and stalls either way.
 * Nothing allocates.
 */
#include <errno.h>

#include "internal.h"

#define BIT(op) (UINT64_C(1) << (op))
#define C_OPS                                                                              \
    (BIT(PYMSI_ITS_CMD_SYNC) | BIT(PYMSI_ITS_CMD_MAPD) | BIT(PYMSI_ITS_CMD_MAPC) |          \
     BIT(PYMSI_ITS_CMD_MAPTI) | BIT(PYMSI_ITS_CMD_MAPI) | BIT(PYMSI_ITS_CMD_INV) |          \
     BIT(PYMSI_ITS_CMD_INVALL))

#define STALL (-1)                 /* a memory error: the queue stalls */

struct ctx {
    pymsi_mem *m;
    const struct pymsi_its_cfg *cfg;
    pymsi_itc *itc;
    uint64_t *rec;
    size_t nrec;
};

static void record(struct ctx *c, uint64_t kind, uint64_t a, uint64_t b)
{
    uint64_t *r = c->rec + 3 * c->nrec++;
    r[0] = kind;
    r[1] = a;
    r[2] = b;
}

/* v >> n for any n (0 once n reaches the width). */
static inline uint64_t shr(uint64_t v, unsigned n)
{
    return n >= 64 ? 0 : v >> n;
}

/* Where table t keeps entry `index`: 1 (*addr), 0 (not provided) or STALL. */
static int entry_addr(const struct ctx *c, const struct pymsi_its_table *t, uint64_t index,
                      uint64_t *addr)
{
    if (!t->valid)
        return 0;
    if (!t->indirect) {
        uint64_t off = index * t->esize;
        if (off >= t->span)
            return 0;
        *addr = t->base + off;
        return 1;
    }
    uint64_t per_page = t->page / t->esize;
    uint64_t l1 = index / per_page;
    if (l1 * 8 >= t->span)
        return 0;
    uint64_t e;
    if (pymsi_mem_read_u64(c->m, t->base + l1 * 8, &e))
        return STALL;
    if (!PYMSI_GET(e, L1E_VALID))
        return 0;
    *addr = (PYMSI_GET(e, L1E_ADDR) & ~((uint64_t)t->page - 1)) + (index % per_page) * t->esize;
    return 1;
}

/* A mapped device's (ITT address, EventID bits): 1, 0 (not mapped) or STALL. */
static int dte(const struct ctx *c, uint64_t dev, uint64_t *itt, unsigned *bits)
{
    if (shr(dev, c->cfg->devbits))
        return 0;
    uint64_t addr, d;
    int r = entry_addr(c, &c->cfg->devices, dev, &addr);
    if (r <= 0)
        return r;
    if (pymsi_mem_read_u64(c->m, addr, &d))
        return STALL;
    if (!PYMSI_GET(d, DTE_V))
        return 0;
    *itt = PYMSI_GET(d, DTE_ITT) << 8;
    *bits = (unsigned)PYMSI_GET(d, DTE_SIZE) + 1;
    return 1;
}

/* The processor a mapped collection targets: 1 (*proc), 0 (not mapped) or STALL. */
static int collection_rd(const struct ctx *c, uint64_t icid, uint64_t *proc)
{
    if (shr(icid, c->cfg->cidbits))
        return 0;
    uint64_t addr, e;
    int r = entry_addr(c, &c->cfg->collections, icid, &addr);
    if (r <= 0)
        return r;
    if (pymsi_mem_read_u64(c->m, addr, &e))
        return STALL;
    if (!PYMSI_GET(e, CTE_V))
        return 0;
    *proc = PYMSI_GET(e, CTE_RDBASE);
    return 1;
}

static int write64(const struct ctx *c, uint64_t addr, uint64_t v)
{
    return pymsi_mem_write_u64(c->m, addr, v) ? STALL : 0;
}

static int cmd_mapd(const struct ctx *c, uint64_t dev, uint64_t d1, uint64_t d2)
{
    if (shr(dev, c->cfg->devbits))
        return PYMSI_ITS_E_MAPD_DEVICE_OOR;
    uint64_t addr;
    int r = entry_addr(c, &c->cfg->devices, dev, &addr);
    if (r < 0)
        return r;
    if (!r)
        return PYMSI_ITS_E_MAPD_DEVICE_OOR;
    uint64_t size = PYMSI_GET(d1, C1_SIZE);
    if (size + 1 > c->cfg->id_bits)
        return PYMSI_ITS_E_MAPD_ITTSIZE_OOR;
    uint64_t itt = PYMSI_GET(d2, C2_ITT);
    return write64(c, addr, PYMSI_GET(d2, C2_V) ? PYMSI_PUT(DTE_V, 1) | PYMSI_PUT(DTE_SIZE, size)
                                                  | PYMSI_PUT(DTE_ITT, itt) : 0);
}

static int cmd_mapc(const struct ctx *c, uint64_t d2)
{
    uint64_t icid = PYMSI_GET(d2, C2_ICID);
    if (shr(icid, c->cfg->cidbits))
        return PYMSI_ITS_E_MAPC_COLLECTION_OOR;
    uint64_t addr;
    int r = entry_addr(c, &c->cfg->collections, icid, &addr);
    if (r < 0)
        return r;
    if (!r)
        return PYMSI_ITS_E_MAPC_COLLECTION_OOR;
    uint64_t rdbase = PYMSI_GET(d2, C2_RDBASE), valid = PYMSI_GET(d2, C2_V);
    if (valid && rdbase >= c->cfg->nproc)
        return PYMSI_ITS_E_MAPC_PROCNUM_OOR;
    return write64(c, addr, valid ? PYMSI_PUT(CTE_V, 1) | PYMSI_PUT(CTE_RDBASE, rdbase) : 0);
}

static int map_physical(const struct ctx *c, uint64_t dev, uint64_t event, uint64_t intid,
                        uint64_t icid)
{
    uint64_t itt;
    unsigned bits;
    int r = dte(c, dev, &itt, &bits);
    if (r < 0)
        return r;
    if (!r)
        return PYMSI_ITS_E_MAPTI_UNMAPPED_DEVICE;
    if (shr(event, bits))
        return PYMSI_ITS_E_MAPTI_ID_OOR;
    if (intid < PYMSI_LPI_BASE || shr(intid, c->cfg->id_bits))
        return PYMSI_ITS_E_MAPTI_PHYSICALID_OOR;
    if (shr(icid, c->cfg->cidbits))
        return PYMSI_ITS_E_COLLECTION_OOR;
    uint64_t addr = itt + event * PYMSI_ITE_SIZE;
    r = write64(c, addr, PYMSI_PUT(ITE0_V, 1) | PYMSI_PUT(ITE0_INTID, intid));
    return r ? r : write64(c, addr + 8, PYMSI_PUT(ITE1_ICID, icid)
                                        | PYMSI_PUT(ITE1_DOORBELL, PYMSI_SPURIOUS));
}

/* The ITE of (dev, event): 0 (ite[]), STALL or `missing` (not mapped). */
static int read_ite(const struct ctx *c, uint64_t dev, uint64_t event, int missing,
                    uint64_t ite[2])
{
    uint64_t itt;
    unsigned bits;
    int r = dte(c, dev, &itt, &bits);
    if (r < 0)
        return r;
    if (!r || shr(event, bits))
        return missing;
    uint64_t addr = itt + event * PYMSI_ITE_SIZE;
    if (pymsi_mem_read_u64(c->m, addr, &ite[0]) || pymsi_mem_read_u64(c->m, addr + 8, &ite[1]))
        return STALL;
    return PYMSI_GET(ite[0], ITE0_V) ? 0 : missing;
}

static int cmd_inv(struct ctx *c, uint64_t dev, uint64_t event)
{
    uint64_t ite[2], proc;
    int r = read_ite(c, dev, event, PYMSI_ITS_E_INV_UNMAPPED_INTERRUPT, ite);
    if (r)
        return r;
    if (PYMSI_GET(ite[0], ITE0_VIRTUAL))     /* virtual: vLPI configuration is not cached */
        return 0;
    r = collection_rd(c, PYMSI_GET(ite[1], ITE1_ICID), &proc);
    if (r < 0)
        return r;
    if (!r)
        return PYMSI_ITS_E_INV_UNMAPPED_INTERRUPT;
    if (proc >= c->cfg->nproc)
        return PYMSI_ITS_E_PROCNUM_OOR;
    record(c, PYMSI_ITSQ_INV, proc, PYMSI_GET(ite[0], ITE0_INTID));
    return 0;
}

static int cmd_invall(struct ctx *c, uint64_t d2)
{
    uint64_t proc;
    int r = collection_rd(c, PYMSI_GET(d2, C2_ICID), &proc);
    if (r < 0)
        return r;
    if (!r)
        return PYMSI_ITS_E_INVALL_UNMAPPED_COLLECTION;
    if (proc >= c->cfg->nproc)
        return PYMSI_ITS_E_PROCNUM_OOR;
    record(c, PYMSI_ITSQ_INVALL, proc, 0);
    return 0;
}

/* One command: 0, STALL or an error code; its cache drop recorded (and done) first. */
static int execute(struct ctx *c, unsigned op, uint64_t d0, uint64_t d1, uint64_t d2)
{
    uint64_t dev = PYMSI_GET(d0, C0_DEVICEID), event = PYMSI_GET(d1, C1_EVENTID);
    switch (op) {
    case PYMSI_ITS_CMD_MAPD:
        record(c, PYMSI_ITSQ_DROP_DEVICE, dev, 0);
        if (c->itc)
            pymsi_itc_clear(c->itc);
        return cmd_mapd(c, dev, d1, d2);
    case PYMSI_ITS_CMD_MAPC:
        record(c, PYMSI_ITSQ_DROP_COLLECTION, PYMSI_GET(d2, C2_ICID), 0);
        if (c->itc)
            pymsi_itc_clear(c->itc);
        return cmd_mapc(c, d2);
    case PYMSI_ITS_CMD_MAPTI:
    case PYMSI_ITS_CMD_MAPI:
        record(c, PYMSI_ITSQ_DROP_EVENT, dev, event);
        if (c->itc)
            pymsi_itc_remove(c->itc, (uint32_t)dev, (uint32_t)event);
        return map_physical(c, dev, event,
                            op == PYMSI_ITS_CMD_MAPTI ? PYMSI_GET(d1, C1_PINTID) : event,
                            PYMSI_GET(d2, C2_ICID));
    case PYMSI_ITS_CMD_SYNC:
        return PYMSI_GET(d2, C2_RDBASE) < c->cfg->nproc ? 0 : PYMSI_ITS_E_PROCNUM_OOR;
    case PYMSI_ITS_CMD_INV:
        return cmd_inv(c, dev, event);
    default: /* PYMSI_ITS_CMD_INVALL */
        return cmd_invall(c, d2);
    }
}

static int table_ok(const struct pymsi_its_table *t)
{
    return (t->page == 4096 || t->page == 16384 || t->page == 65536) && t->esize &&
           t->esize <= t->page;
}

int pymsi_its_cmdq_run(pymsi_mem *m, const struct pymsi_its_cfg *cfg, pymsi_itc *itc,
                       uint64_t ops, uint32_t cwriter, struct pymsi_its_run *run,
                       uint64_t *rec, size_t rec_max)
{
    if (!m || !cfg || !run || (!rec && rec_max))
        return -EINVAL;
    if (!cfg->cq_size || cfg->cq_size % 32 || cwriter >= cfg->cq_size || cwriter % 32 ||
        run->creadr >= cfg->cq_size || run->creadr % 32)
        return -EINVAL;
    if (cfg->devbits < 1 || cfg->devbits > 32 || cfg->id_bits < 1 || cfg->id_bits > 32 ||
        cfg->cidbits < 1 || cfg->cidbits > 32 || !table_ok(&cfg->devices) ||
        !table_ok(&cfg->collections))
        return -EINVAL;
    struct ctx c = {m, cfg, itc, rec, 0};
    uint32_t creadr = run->creadr;
    int status = PYMSI_ITSQ_DONE;
    run->ncmds = run->op = run->code = 0;
    while (creadr != cwriter) {
        if (c.nrec + 2 > rec_max) {
            status = PYMSI_ITSQ_FULL;
            break;
        }
        uint8_t raw[32];
        if (pymsi_mem_read(m, cfg->cq_base + creadr, raw, sizeof raw)) {
            status = PYMSI_ITSQ_STALL;
            break;
        }
        uint64_t d0 = pymsi_le64(raw), d1 = pymsi_le64(raw + 8), d2 = pymsi_le64(raw + 16);
        unsigned op = (unsigned)PYMSI_GET(d0, C0_OP);
        run->op = op;
        if (op >= 64 || !(ops & C_OPS & UINT64_C(1) << op)) {
            status = PYMSI_ITSQ_HANDOFF;
            break;
        }
        int r = execute(&c, op, d0, d1, d2);
        if (r) {
            status = r < 0 ? PYMSI_ITSQ_STALL : PYMSI_ITSQ_ERROR;
            run->code = r < 0 ? 0 : (uint32_t)r;
            break;
        }
        run->ncmds++;
        creadr = (creadr + 32) % cfg->cq_size;
    }
    if (status == PYMSI_ITSQ_DONE || status == PYMSI_ITSQ_FULL)
        run->op = 0;
    run->creadr = creadr;
    run->nrec = (uint32_t)c.nrec;
    return status;
}
