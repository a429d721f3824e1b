/*
 * Physical memory: a set of RAM regions over a sparse store of 4 KiB pages.
 * A page exists only once something was written to it; reading RAM that was
 * never written gives zeroes; an access that is not entirely RAM is a bus
 * error (-EFAULT) and changes nothing.
 *
 * A page may back several memories at once (pymsi_mem_alias_page: a VMM's
 * guest RAM is the host's RAM under other addresses), so each backing page
 * carries a reference count in a header just before its data, and a memory
 * drops its references when it is freed or re-points a page.
 */
#include <errno.h>
#include <stdlib.h>

#include "internal.h"

struct region {
    uint64_t base;
    uint64_t last;  /* inclusive, so a region may end at 2^64 - 1 */
};

struct slot {
    uint64_t key;   /* pfn + 1; 0 = empty */
    uint8_t *page;
};

struct pymsi_mem {
    struct region *regions;  /* sorted, non-overlapping */
    size_t nregions;
    size_t region_cap;
    struct slot *slots;      /* open addressing, linear probing */
    unsigned bits;
    size_t count;
};

#define MEM_INITIAL_BITS 6

/* The header in front of every backing page; 16 bytes keep the data aligned. */
struct page_hdr {
    size_t refs;
    size_t pad;
};

static uint8_t *page_alloc(void)
{
    struct page_hdr *h = calloc(1, sizeof(*h) + PYMSI_PAGE_SIZE);
    if (!h)
        return NULL;
    h->refs = 1;
    return (uint8_t *)(h + 1);
}

static void page_ref(uint8_t *p)
{
    ((struct page_hdr *)p - 1)->refs++;
}

static void page_unref(uint8_t *p)
{
    if (!p)
        return;
    struct page_hdr *h = (struct page_hdr *)p - 1;
    if (!--h->refs)
        free(h);
}

pymsi_mem *pymsi_mem_new(void)
{
    pymsi_mem *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    m->bits = MEM_INITIAL_BITS;
    m->slots = calloc((size_t)1 << m->bits, sizeof(*m->slots));
    if (!m->slots) {
        free(m);
        return NULL;
    }
    return m;
}

void pymsi_mem_free(pymsi_mem *m)
{
    if (!m)
        return;
    size_t cap = (size_t)1 << m->bits;
    for (size_t i = 0; i < cap; i++)
        page_unref(m->slots[i].page);
    free(m->slots);
    free(m->regions);
    free(m);
}

/* The slot of `pfn`, or NULL if the page does not exist. */
static struct slot *slot_find(const pymsi_mem *m, uint64_t pfn)
{
    uint64_t key = pfn + 1;
    size_t mask = ((size_t)1 << m->bits) - 1;
    size_t i = (size_t)pymsi_hash(key, m->bits);
    for (;;) {
        uint64_t k = m->slots[i].key;
        if (k == key)
            return &m->slots[i];
        if (k == 0)
            return NULL;
        i = (i + 1) & mask;
    }
}

const uint8_t *pymsi_mem_page(const pymsi_mem *m, uint64_t pfn)
{
    const struct slot *s = slot_find(m, pfn);
    return s ? s->page : NULL;
}

static int grow(pymsi_mem *m)
{
    unsigned bits = m->bits + 1;
    size_t cap = (size_t)1 << bits, mask = cap - 1;
    struct slot *slots = calloc(cap, sizeof(*slots));
    if (!slots)
        return -ENOMEM;
    size_t old = (size_t)1 << m->bits;
    for (size_t j = 0; j < old; j++) {
        if (!m->slots[j].key)
            continue;
        size_t i = (size_t)pymsi_hash(m->slots[j].key, bits);
        while (slots[i].key)
            i = (i + 1) & mask;
        slots[i] = m->slots[j];
    }
    free(m->slots);
    m->slots = slots;
    m->bits = bits;
    return 0;
}

/* Room for one more page (grows the table if needed); -ENOMEM otherwise. */
static int slot_reserve(pymsi_mem *m)
{
    if ((m->count + 1) * 2 > ((size_t)1 << m->bits))
        return grow(m);
    return 0;
}

/* Install `p` (whose reference the caller hands over) as the page of `pfn`,
 * which has no page; slot_reserve() must have succeeded. */
static void slot_insert(pymsi_mem *m, uint64_t pfn, uint8_t *p)
{
    uint64_t key = pfn + 1;
    size_t mask = ((size_t)1 << m->bits) - 1;
    size_t i = (size_t)pymsi_hash(key, m->bits);
    while (m->slots[i].key)
        i = (i + 1) & mask;
    m->slots[i].key = key;
    m->slots[i].page = p;
    m->count++;
}

/* The page of `pfn`, made (zeroed) if it does not exist yet; NULL on ENOMEM. */
static uint8_t *page_get_or_make(pymsi_mem *m, uint64_t pfn)
{
    uint8_t *p = (uint8_t *)pymsi_mem_page(m, pfn);
    if (p)
        return p;
    if (slot_reserve(m))
        return NULL;
    p = page_alloc();
    if (!p)
        return NULL;
    slot_insert(m, pfn, p);
    return p;
}

int pymsi_mem_alias_page(pymsi_mem *m, uint64_t addr, pymsi_mem *src, uint64_t src_addr)
{
    if ((addr & PYMSI_PAGE_MASK) || (src_addr & PYMSI_PAGE_MASK))
        return -EINVAL;
    if (!pymsi_mem_is_ram(m, addr, PYMSI_PAGE_SIZE) ||
        !pymsi_mem_is_ram(src, src_addr, PYMSI_PAGE_SIZE))
        return -EINVAL;
    uint64_t pfn = addr >> PYMSI_PAGE_SHIFT;
    struct slot *s = slot_find(m, pfn);
    if (!s && slot_reserve(m))
        return -ENOMEM;
    /* src's page, made if never written (growing src cannot move m's slots,
     * unless src is m: look the slot up again afterwards). */
    uint8_t *p = page_get_or_make(src, src_addr >> PYMSI_PAGE_SHIFT);
    if (!p)
        return -ENOMEM;
    page_ref(p);
    s = slot_find(m, pfn);
    if (s) {
        page_unref(s->page);
        s->page = p;
        return 0;
    }
    if (slot_reserve(m)) {
        page_unref(p);
        return -ENOMEM;
    }
    slot_insert(m, pfn, p);
    return 0;
}

int pymsi_mem_add_ram(pymsi_mem *m, uint64_t base, uint64_t size)
{
    if (!size || (base & PYMSI_PAGE_MASK) || (size & PYMSI_PAGE_MASK))
        return -EINVAL;
    uint64_t last = base + (size - 1);
    if (last < base)
        return -EINVAL;
    size_t pos = 0;
    while (pos < m->nregions && m->regions[pos].base < base)
        pos++;
    if (pos > 0 && m->regions[pos - 1].last >= base)
        return -EEXIST;
    if (pos < m->nregions && m->regions[pos].base <= last)
        return -EEXIST;
    if (m->nregions == m->region_cap) {
        size_t cap = m->region_cap ? 2 * m->region_cap : 4;
        struct region *r = realloc(m->regions, cap * sizeof(*r));
        if (!r)
            return -ENOMEM;
        m->regions = r;
        m->region_cap = cap;
    }
    memmove(&m->regions[pos + 1], &m->regions[pos],
            (m->nregions - pos) * sizeof(*m->regions));
    m->regions[pos].base = base;
    m->regions[pos].last = last;
    m->nregions++;
    return 0;
}

/* 1 if [addr, addr + len) is RAM throughout (adjacent regions may be crossed). */
int pymsi_mem_is_ram(const pymsi_mem *m, uint64_t addr, uint64_t len)
{
    if (!len)
        return 1;
    uint64_t last = addr + (len - 1);
    if (last < addr)
        return 0;
    for (size_t i = 0; i < m->nregions; i++) {
        const struct region *r = &m->regions[i];
        if (r->last < addr)
            continue;
        if (r->base > addr)
            return 0;
        if (r->last >= last)
            return 1;
        addr = r->last + 1;  /* continue into an adjacent region */
    }
    return 0;
}

int pymsi_mem_read(const pymsi_mem *m, uint64_t addr, void *buf, size_t len)
{
    if (!pymsi_mem_is_ram(m, addr, len))
        return -EFAULT;
    uint8_t *out = buf;
    while (len) {
        size_t off = (size_t)(addr & PYMSI_PAGE_MASK);
        size_t chunk = PYMSI_PAGE_SIZE - off;
        if (chunk > len)
            chunk = len;
        const uint8_t *p = pymsi_mem_page(m, addr >> PYMSI_PAGE_SHIFT);
        if (p)
            memcpy(out, p + off, chunk);
        else
            memset(out, 0, chunk);
        out += chunk;
        addr += chunk;
        len -= chunk;
    }
    return 0;
}

int pymsi_mem_write(pymsi_mem *m, uint64_t addr, const void *buf, size_t len)
{
    if (!pymsi_mem_is_ram(m, addr, len))
        return -EFAULT;
    /* Make every page first, so that running out of memory writes nothing. */
    uint64_t first = addr >> PYMSI_PAGE_SHIFT;
    uint64_t lastpfn = len ? (addr + (len - 1)) >> PYMSI_PAGE_SHIFT : first;
    for (uint64_t pfn = first; len && pfn <= lastpfn; pfn++) {
        if (!page_get_or_make(m, pfn))
            return -ENOMEM;
    }
    const uint8_t *in = buf;
    while (len) {
        size_t off = (size_t)(addr & PYMSI_PAGE_MASK);
        size_t chunk = PYMSI_PAGE_SIZE - off;
        if (chunk > len)
            chunk = len;
        uint8_t *p = (uint8_t *)pymsi_mem_page(m, addr >> PYMSI_PAGE_SHIFT);
        memcpy(p + off, in, chunk);
        in += chunk;
        addr += chunk;
        len -= chunk;
    }
    return 0;
}

int pymsi_mem_read_u64(const pymsi_mem *m, uint64_t addr, uint64_t *out)
{
    size_t off = (size_t)(addr & PYMSI_PAGE_MASK);
    if (PYMSI_LIKELY(off <= PYMSI_PAGE_SIZE - 8)) {
        const uint8_t *p = pymsi_mem_page(m, addr >> PYMSI_PAGE_SHIFT);
        if (p) {
            *out = pymsi_le64(p + off);
            return 0;
        }
    }
    uint8_t b[8];
    int rc = pymsi_mem_read(m, addr, b, 8);
    if (rc)
        return rc;
    *out = pymsi_le64(b);
    return 0;
}

int pymsi_mem_read_u32(const pymsi_mem *m, uint64_t addr, uint32_t *out)
{
    uint8_t b[4];
    int rc = pymsi_mem_read(m, addr, b, 4);
    if (rc)
        return rc;
    *out = pymsi_le32(b);
    return 0;
}

int pymsi_mem_write_u64(pymsi_mem *m, uint64_t addr, uint64_t v)
{
    uint8_t b[8];
    pymsi_put_le64(b, v);
    return pymsi_mem_write(m, addr, b, 8);
}

int pymsi_mem_write_u32(pymsi_mem *m, uint64_t addr, uint32_t v)
{
    uint8_t b[4];
    pymsi_put_le32(b, v);
    return pymsi_mem_write(m, addr, b, 4);
}

size_t pymsi_mem_pages(const pymsi_mem *m)
{
    return m->count;
}

size_t pymsi_mem_regions(const pymsi_mem *m, uint64_t *bases, uint64_t *sizes, size_t max)
{
    size_t n = m->nregions < max ? m->nregions : max;
    for (size_t i = 0; i < n; i++) {
        bases[i] = m->regions[i].base;
        sizes[i] = m->regions[i].last - m->regions[i].base + 1;
    }
    return m->nregions;
}

int pymsi_nop4(uint64_t a, uint64_t b, uint64_t c, uint64_t d)
{
    (void)a;
    (void)b;
    (void)c;
    (void)d;
    return 0;
}
