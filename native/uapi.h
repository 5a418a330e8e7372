/* Kernel uapi bits that Debian 12's 6.1 headers lack (userfaultfd WP_ASYNC/MOVE/POISON, PAGEMAP_SCAN).
 * Values and layouts follow include/uapi/linux/userfaultfd.h and include/uapi/linux/fs.h of Linux 6.7+.
 * Every ioctl number is checked against the _IOWR/_IOR formula below, so a typo cannot slip through. */
#ifndef FERRY_UAPI_H
#define FERRY_UAPI_H

#include <linux/ioctl.h>
#include <linux/types.h>
#include <linux/userfaultfd.h>
#include <linux/fs.h>

/* ---- userfaultfd features newer than 6.1 ---- */
#ifndef UFFD_FEATURE_WP_HUGETLBFS_SHMEM
#define UFFD_FEATURE_WP_HUGETLBFS_SHMEM (1 << 12)
#endif
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_POISON
#define UFFD_FEATURE_POISON (1 << 14)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
#ifndef UFFD_FEATURE_MOVE
#define UFFD_FEATURE_MOVE (1 << 16)
#endif

#ifndef _UFFDIO_MOVE
#define _UFFDIO_MOVE (0x05)
#endif
#ifndef _UFFDIO_POISON
#define _UFFDIO_POISON (0x08)
#endif

#ifndef UFFDIO_MOVE
struct uffdio_move {
  __u64 dst;
  __u64 src;
  __u64 len;
#define UFFDIO_MOVE_MODE_DONTWAKE ((__u64)1 << 0)
#define UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES ((__u64)1 << 1)
  __u64 mode;
  __s64 move; /* out: bytes moved or -errno */
};
#define UFFDIO_MOVE _IOWR(UFFDIO, _UFFDIO_MOVE, struct uffdio_move)
#endif

#ifndef UFFDIO_POISON
struct uffdio_poison {
  struct uffdio_range range;
#define UFFDIO_POISON_MODE_DONTWAKE ((__u64)1 << 0)
  __u64 mode;
  __s64 updated;
};
#define UFFDIO_POISON _IOWR(UFFDIO, _UFFDIO_POISON, struct uffdio_poison)
#endif

/* ---- PAGEMAP_SCAN (fs/proc/task_mmu.c, 6.7+) ---- */
#ifndef PAGEMAP_SCAN
#define PAGE_IS_WPALLOWED (1 << 0)
#define PAGE_IS_WRITTEN (1 << 1)
#define PAGE_IS_FILE (1 << 2)
#define PAGE_IS_PRESENT (1 << 3)
#define PAGE_IS_SWAPPED (1 << 4)
#define PAGE_IS_PFNZERO (1 << 5)
#define PAGE_IS_HUGE (1 << 6)
#define PAGE_IS_SOFT_DIRTY (1 << 7)

struct page_region {
  __u64 start;
  __u64 end;
  __u64 categories;
};

#define PM_SCAN_WP_MATCHING (1 << 0)
#define PM_SCAN_CHECK_WPASYNC (1 << 1)

struct pm_scan_arg {
  __u64 size;
  __u64 flags;
  __u64 start;
  __u64 end;
  __u64 walk_end;
  __u64 vec;
  __u64 vec_len;
  __u64 max_pages;
  __u64 category_inverted;
  __u64 category_mask;
  __u64 category_anyof_mask;
  __u64 return_mask;
};
#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#endif

/* ---- layout and number checks (values computed by hand from the _IOC formula:
 *      dir << 30 | size << 16 | type << 8 | nr; _IOWR dir = 3, _IOR dir = 2) ---- */
_Static_assert(sizeof(struct pm_scan_arg) == 96, "pm_scan_arg is 12 u64");
_Static_assert(sizeof(struct page_region) == 24, "page_region is 3 u64");
_Static_assert(PAGEMAP_SCAN == 0xC0606610u, "PAGEMAP_SCAN = _IOWR('f', 16, 96)");
_Static_assert(sizeof(struct uffdio_api) == 24, "uffdio_api");
_Static_assert(sizeof(struct uffdio_register) == 32, "uffdio_register");
_Static_assert(sizeof(struct uffdio_copy) == 40, "uffdio_copy");
_Static_assert(sizeof(struct uffdio_zeropage) == 32, "uffdio_zeropage");
_Static_assert(sizeof(struct uffdio_writeprotect) == 24, "uffdio_writeprotect");
_Static_assert(sizeof(struct uffdio_continue) == 32, "uffdio_continue");
_Static_assert(sizeof(struct uffdio_move) == 40, "uffdio_move");
_Static_assert(sizeof(struct uffd_msg) == 32, "uffd_msg");
_Static_assert(UFFDIO_API == 0xC018AA3Fu, "UFFDIO_API");
_Static_assert(UFFDIO_REGISTER == 0xC020AA00u, "UFFDIO_REGISTER");
_Static_assert(UFFDIO_UNREGISTER == 0x8010AA01u, "UFFDIO_UNREGISTER");
_Static_assert(UFFDIO_WAKE == 0x8010AA02u, "UFFDIO_WAKE");
_Static_assert(UFFDIO_COPY == 0xC028AA03u, "UFFDIO_COPY");
_Static_assert(UFFDIO_ZEROPAGE == 0xC020AA04u, "UFFDIO_ZEROPAGE");
_Static_assert(UFFDIO_MOVE == 0xC028AA05u, "UFFDIO_MOVE");
_Static_assert(UFFDIO_WRITEPROTECT == 0xC018AA06u, "UFFDIO_WRITEPROTECT");
_Static_assert(UFFDIO_CONTINUE == 0xC020AA07u, "UFFDIO_CONTINUE");
_Static_assert(UFFDIO_POISON == 0xC020AA08u, "UFFDIO_POISON");

#endif
