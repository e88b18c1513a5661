// SPDX-License-Identifier: GPL-2.0 OR BSD-3-Clause
/*
 * vfu-platform bridge function: PCI glue that turns the bridge back into the
 * platform devices it carries.
 *
 * vfu-platform serves platform devices (pl031, pl061, a 16550 ...) to a guest as
 * one PCI function: the device registers are BARs, and a trapped "IRQ page" BAR
 * holds a descriptor of what sits behind the bridge (docs/guest-descriptor.md in
 * the vfu-platform tree). This driver reads that descriptor and creates one AMBA
 * or platform device per DEVICE record, with its MEM resources nested under the
 * BAR resources and its interrupts either on the function's MSI-X vectors or
 * demultiplexed from INTA through a small irq domain, so that the guest's stock
 * drivers (rtc-pl031, gpio-pl061, 8250_dw ...) bind to them.
 *
 * The descriptor comes from another process: it is untrusted input, and every
 * length and index in it is checked before use.
 */

#include <linux/amba/bus.h>
#include <linux/bitmap.h>
#include <linux/clk-provider.h>
#include <linux/clkdev.h>
#include <linux/ctype.h>
#include <linux/idr.h>
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/irq.h>
#include <linux/irqdomain.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/pci.h>
#include <linux/platform_device.h>
#include <linux/property.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/unaligned.h>

/* The vendor-specific capability that announces the descriptor */
#define VFU_CAP_LEN_OFF		2
#define VFU_CAP_TYPE_OFF	3
#define VFU_CAP_SIG_OFF		4
#define VFU_CAP_BAR_OFF		8
#define VFU_CAP_VER_OFF		9
#define VFU_CAP_OFFSET_OFF	12
#define VFU_CAP_LENGTH_OFF	16
#define VFU_CAP_LEN		20
#define VFU_CAP_TYPE_DESC	0x01

#define VFU_MAGIC		0x44554656	/* "VFUD" */
#define VFU_VERSION		1
#define VFU_HDR_LEN		16
#define VFU_DESC_MAX		4096

/* IRQ page registers (docs/irq-page.md) */
#define VFU_IRQ_ACTIVE		0xc00
#define VFU_IRQ_LINES		0xc08
#define VFU_IRQ_EOI		0xc20
#define VFU_IRQ_CTRL		0xc24
#define VFU_IRQ_CTRL_EXACT_EOI	BIT(0)
#define VFU_PAGE_MAGIC		0xd00
#define VFU_PAGE_MAGIC_VALUE	0x50554656	/* "VFUP" */
#define VFU_PAGE_MIN		0xd04
#define VFU_NO_IRQ		0xffffffff

/* Record types */
#define VFU_REC_DEVICE		0x0001
#define VFU_REC_NAME		0x0010
#define VFU_REC_BIND		0x0011
#define VFU_REC_AMBA_ID		0x0012
#define VFU_REC_COMPATIBLE	0x0013
#define VFU_REC_REGION		0x0014
#define VFU_REC_IRQ		0x0015
#define VFU_REC_PROPERTY	0x0016

#define VFU_REGION_LEN		24	/* u32 bar, u32 flags, u64 offset, u64 size */
#define VFU_IRQREC_LEN		12	/* u32 line, u32 vector, u32 trigger */

enum vfu_bind {
	VFU_BIND_AMBA = 1,
	VFU_BIND_PLATFORM_NAME = 2,
	VFU_BIND_DT_COMPATIBLE = 3,
};

enum vfu_prop_type {
	VFU_PROP_U32 = 1,
	VFU_PROP_STRINGS = 2,
	VFU_PROP_FLAG = 3,
	VFU_PROP_U64 = 4,
};

/* What this driver accepts; a descriptor beyond these is refused, not truncated */
#define VFU_MAX_DEVICES		32
#define VFU_MAX_REGIONS		8
#define VFU_MAX_IRQS		AMBA_NR_IRQS
#define VFU_MAX_COMPAT		8
#define VFU_MAX_PROPS		32
#define VFU_MAX_LINES		128
#define VFU_MAX_NAME		48

#define VFU_DEFAULT_CLK_HZ	24000000	/* the apb_pclk of QEMU's Arm virt */

struct vfu_region {
	u32 bar;
	u32 flags;
	u64 offset;
	u64 size;
	const char *name;
};

struct vfu_irq {
	u32 line;
	u32 vector;
	u32 trigger;
	const char *name;
};

struct vfu_prop {
	u16 type;
	const char *name;
	const u8 *val;		/* little-endian, inside the descriptor copy */
	u16 len;
};

struct vfu_dev_desc {
	const char *name;
	u32 bind;
	u32 periphid;
	unsigned int nr_compat;
	const char *compat[VFU_MAX_COMPAT];
	unsigned int nr_regions;
	struct vfu_region region[VFU_MAX_REGIONS];
	unsigned int nr_irqs;
	struct vfu_irq irq[VFU_MAX_IRQS];
	unsigned int nr_props;
	struct vfu_prop prop[VFU_MAX_PROPS];
};

struct vfu_child {
	int id;
	struct amba_device *adev;
	struct platform_device *pdev;
	struct clk_hw *clk;
	struct clk_lookup *lookup[2];
	unsigned int irqs[VFU_MAX_IRQS];
};

struct vfu_bridge {
	struct pci_dev *pdev;
	void __iomem *page;
	unsigned int page_bar;
	u16 irq_mode;
	u32 nr_lines;

	u8 *desc;
	unsigned int nr_devs;
	struct vfu_dev_desc *devs;

	/* INTx mode */
	struct fwnode_handle *fwnode;
	struct irq_domain *domain;
	u32 *line_trigger;	/* per line, from the IRQ records; 0: unused */
	unsigned long *masked;	/* per line: masked by the irq core */
	unsigned long *eoi_held; /* per line: handled while masked, EOI owed */
	bool intx_requested;

	/* MSI-X mode */
	bool vectors;

	unsigned int nr_children;
	struct vfu_child *children;
};

static DEFINE_IDA(vfu_child_ida);

#define vfu_bad(b, fmt, ...)						\
({									\
	dev_err(&(b)->pdev->dev, "invalid descriptor: " fmt "\n",	\
		##__VA_ARGS__);						\
	-EINVAL;							\
})

/* ---- descriptor parsing ------------------------------------------------- */

struct vfu_rec {
	u16 type;
	u16 len;
	const u8 *val;
};

/*
 * The record at *pos in [*pos, end): 1 and the record, 0 at the end of the
 * container, -EINVAL if the record runs past it. The padding after the last
 * record may be absent.
 */
static int vfu_next_rec(const u8 *buf, u32 *pos, u32 end, struct vfu_rec *rec)
{
	u32 p = *pos;

	if (p >= end)
		return 0;
	if (end - p < 4)
		return -EINVAL;
	rec->type = get_unaligned_le16(buf + p);
	rec->len = get_unaligned_le16(buf + p + 2);
	if (rec->len > end - p - 4)
		return -EINVAL;
	rec->val = buf + p + 4;
	*pos = p + 4 + ALIGN(rec->len, 4);
	return 1;
}

/* A string that fills its field exactly: NUL last, no NUL before */
static const char *vfu_str(const u8 *val, u32 len)
{
	if (!len || val[len - 1] || strnlen(val, len) != len - 1)
		return NULL;
	return val;
}

/* Device and driver names end up in sysfs: keep them plain */
static bool vfu_name_ok(const char *s)
{
	size_t n = strlen(s);

	if (!n || n > VFU_MAX_NAME)
		return false;
	for (; *s; s++)
		if (!isalnum(*s) && !strchr("-_,+", *s))
			return false;
	return true;
}

static bool vfu_trigger_ok(u32 t)
{
	return t == IRQ_TYPE_EDGE_RISING || t == IRQ_TYPE_EDGE_FALLING ||
	       t == IRQ_TYPE_EDGE_BOTH || t == IRQ_TYPE_LEVEL_HIGH ||
	       t == IRQ_TYPE_LEVEL_LOW;
}

static int vfu_parse_region(struct vfu_bridge *b, unsigned int n,
			    struct vfu_dev_desc *d, const struct vfu_rec *r)
{
	struct vfu_region *reg;
	struct resource *res;

	if (d->nr_regions == VFU_MAX_REGIONS)
		return vfu_bad(b, "device %u: more than %d REGION records", n,
			       VFU_MAX_REGIONS);
	reg = &d->region[d->nr_regions];
	if (r->len < VFU_REGION_LEN + 1)
		return vfu_bad(b, "device %u: REGION of %u bytes", n, r->len);
	reg->bar = get_unaligned_le32(r->val);
	reg->flags = get_unaligned_le32(r->val + 4);
	reg->offset = get_unaligned_le64(r->val + 8);
	reg->size = get_unaligned_le64(r->val + 16);
	reg->name = vfu_str(r->val + VFU_REGION_LEN, r->len - VFU_REGION_LEN);
	if (!reg->name)
		return vfu_bad(b, "device %u: REGION name is not a string", n);
	if (reg->bar >= PCI_STD_NUM_BARS || reg->bar == b->page_bar)
		return vfu_bad(b, "device %u: REGION in BAR %u", n, reg->bar);
	res = &b->pdev->resource[reg->bar];
	if (resource_type(res) != IORESOURCE_MEM || !resource_size(res) ||
	    (res->flags & IORESOURCE_UNSET) || !res->parent)
		return vfu_bad(b, "device %u: BAR %u is not an assigned memory BAR",
			       n, reg->bar);
	if (!reg->size || reg->offset >= resource_size(res) ||
	    reg->size > resource_size(res) - reg->offset)
		return vfu_bad(b, "device %u: REGION %#llx+%#llx outside BAR %u",
			       n, reg->offset, reg->size, reg->bar);
	d->nr_regions++;
	return 0;
}

static int vfu_parse_irq(struct vfu_bridge *b, unsigned int n,
			 struct vfu_dev_desc *d, const struct vfu_rec *r)
{
	struct vfu_irq *irq;

	if (d->nr_irqs == VFU_MAX_IRQS)
		return vfu_bad(b, "device %u: more than %d IRQ records", n,
			       VFU_MAX_IRQS);
	irq = &d->irq[d->nr_irqs];
	if (r->len < VFU_IRQREC_LEN + 1)
		return vfu_bad(b, "device %u: IRQ of %u bytes", n, r->len);
	irq->line = get_unaligned_le32(r->val);
	irq->vector = get_unaligned_le32(r->val + 4);
	irq->trigger = get_unaligned_le32(r->val + 8);
	irq->name = vfu_str(r->val + VFU_IRQREC_LEN, r->len - VFU_IRQREC_LEN);
	if (!irq->name)
		return vfu_bad(b, "device %u: IRQ name is not a string", n);
	if (!vfu_trigger_ok(irq->trigger))
		return vfu_bad(b, "device %u: IRQ trigger %u", n, irq->trigger);
	if (b->irq_mode == 0) {
		if (irq->line >= b->nr_lines)
			return vfu_bad(b, "device %u: IRQ line %u of %u lines",
				       n, irq->line, b->nr_lines);
	} else if (irq->vector >= VFU_MAX_LINES) {
		return vfu_bad(b, "device %u: IRQ line %u has no MSI-X vector (%#x)",
			       n, irq->line, irq->vector);
	}
	d->nr_irqs++;
	return 0;
}

static int vfu_parse_prop(struct vfu_bridge *b, unsigned int n,
			  struct vfu_dev_desc *d, const struct vfu_rec *r)
{
	struct vfu_prop *p;
	u16 name_len;
	u32 start;

	if (r->len < 4)
		return vfu_bad(b, "device %u: PROPERTY of %u bytes", n, r->len);
	if (d->nr_props == VFU_MAX_PROPS)
		return vfu_bad(b, "device %u: more than %d PROPERTY records", n,
			       VFU_MAX_PROPS);
	p = &d->prop[d->nr_props];
	p->type = get_unaligned_le16(r->val);
	name_len = get_unaligned_le16(r->val + 2);
	if (name_len < 2 || name_len > r->len - 4)
		return vfu_bad(b, "device %u: PROPERTY name_len %u", n, name_len);
	p->name = vfu_str(r->val + 4, name_len);
	if (!p->name)
		return vfu_bad(b, "device %u: PROPERTY name is not a string", n);
	start = ALIGN(4 + name_len, 4);
	if (start > r->len)
		return vfu_bad(b, "device %u: property %s: padding runs past the record",
			       n, p->name);
	p->val = r->val + start;
	p->len = r->len - start;

	switch (p->type) {
	case VFU_PROP_U32:
	case VFU_PROP_U64:
		if (!p->len || p->len % (p->type == VFU_PROP_U32 ? 4 : 8))
			return vfu_bad(b, "device %u: property %s: %u bytes is no number array",
				       n, p->name, p->len);
		break;
	case VFU_PROP_STRINGS:
		if (!p->len || p->val[p->len - 1])
			return vfu_bad(b, "device %u: property %s: strings without NUL",
				       n, p->name);
		break;
	case VFU_PROP_FLAG:
		if (p->len)
			return vfu_bad(b, "device %u: property %s: a flag with a value",
				       n, p->name);
		break;
	default:
		return 0;	/* unknown property type: skipped */
	}
	d->nr_props++;
	return 0;
}

static int vfu_parse_device(struct vfu_bridge *b, unsigned int n,
			    const u8 *buf, u32 start, u32 end,
			    struct vfu_dev_desc *d)
{
	unsigned int names = 0, binds = 0, ambas = 0;
	struct vfu_rec r;
	u32 pos = start;
	int ret;

	while ((ret = vfu_next_rec(buf, &pos, end, &r)) > 0) {
		switch (r.type) {
		case VFU_REC_NAME:
			d->name = vfu_str(r.val, r.len);
			if (!d->name || !vfu_name_ok(d->name))
				return vfu_bad(b, "device %u: NAME is not a plain name", n);
			names++;
			break;
		case VFU_REC_BIND:
			if (r.len != 4)
				return vfu_bad(b, "device %u: BIND of %u bytes", n, r.len);
			d->bind = get_unaligned_le32(r.val);
			binds++;
			break;
		case VFU_REC_AMBA_ID:
			if (r.len != 4)
				return vfu_bad(b, "device %u: AMBA_ID of %u bytes", n, r.len);
			d->periphid = get_unaligned_le32(r.val);
			ambas++;
			break;
		case VFU_REC_COMPATIBLE:
			if (d->nr_compat == VFU_MAX_COMPAT)
				return vfu_bad(b, "device %u: more than %d COMPATIBLE records",
					       n, VFU_MAX_COMPAT);
			d->compat[d->nr_compat] = vfu_str(r.val, r.len);
			if (!d->compat[d->nr_compat])
				return vfu_bad(b, "device %u: COMPATIBLE is not a string", n);
			d->nr_compat++;
			break;
		case VFU_REC_REGION:
			ret = vfu_parse_region(b, n, d, &r);
			if (ret)
				return ret;
			break;
		case VFU_REC_IRQ:
			ret = vfu_parse_irq(b, n, d, &r);
			if (ret)
				return ret;
			break;
		case VFU_REC_PROPERTY:
			ret = vfu_parse_prop(b, n, d, &r);
			if (ret)
				return ret;
			break;
		default:
			break;	/* unknown record: skipped */
		}
	}
	if (ret < 0)
		return vfu_bad(b, "device %u: a record runs past the DEVICE record", n);
	if (names != 1 || binds != 1)
		return vfu_bad(b, "device %u: %u NAME and %u BIND records, need 1 each",
			       n, names, binds);
	if (ambas > 1)
		return vfu_bad(b, "device %s: %u AMBA_ID records", d->name, ambas);
	switch (d->bind) {
	case VFU_BIND_AMBA:
		if (!ambas)
			return vfu_bad(b, "device %s: BIND AMBA without AMBA_ID", d->name);
		break;
	case VFU_BIND_PLATFORM_NAME:
		break;
	case VFU_BIND_DT_COMPATIBLE:
		if (!d->nr_compat)
			return vfu_bad(b, "device %s: BIND DT_COMPATIBLE without COMPATIBLE",
				       d->name);
		break;
	default:
		return vfu_bad(b, "device %s: BIND kind %u", d->name, d->bind);
	}
	if (!d->nr_regions)
		return vfu_bad(b, "device %s: no REGION record", d->name);
	return 0;
}

/* One trigger per line: two records must not disagree on a shared line */
static int vfu_check_lines(struct vfu_bridge *b)
{
	unsigned int i, j;

	for (i = 0; i < b->nr_devs; i++) {
		for (j = 0; j < b->devs[i].nr_irqs; j++) {
			const struct vfu_irq *irq = &b->devs[i].irq[j];
			u32 *t = &b->line_trigger[irq->line];

			if (*t && *t != irq->trigger)
				return vfu_bad(b, "IRQ line %u with triggers %u and %u",
					       irq->line, *t, irq->trigger);
			*t = irq->trigger;
		}
	}
	return 0;
}

static int vfu_parse(struct vfu_bridge *b, u32 cap_length)
{
	const u8 *buf = b->desc;
	u32 total_len, pos;
	u16 version, header_len, count;
	unsigned int n = 0;
	struct vfu_rec r;
	int ret;

	if (get_unaligned_le32(buf) != VFU_MAGIC)
		return vfu_bad(b, "header magic %#010x", get_unaligned_le32(buf));
	version = get_unaligned_le16(buf + 4);
	header_len = get_unaligned_le16(buf + 6);
	total_len = get_unaligned_le32(buf + 8);
	count = get_unaligned_le16(buf + 12);
	b->irq_mode = get_unaligned_le16(buf + 14);
	if (version != VFU_VERSION)
		return vfu_bad(b, "header version %u, this driver knows %u",
			       version, VFU_VERSION);
	if (total_len > cap_length)
		return vfu_bad(b, "total_len %u beyond the capability's length %u",
			       total_len, cap_length);
	if (header_len < VFU_HDR_LEN || header_len % 4 || header_len > total_len)
		return vfu_bad(b, "header_len %u", header_len);
	if (b->irq_mode > 1)
		return vfu_bad(b, "irq_mode %u", b->irq_mode);
	if (count > VFU_MAX_DEVICES)
		return vfu_bad(b, "%u devices, this driver takes %d", count,
			       VFU_MAX_DEVICES);

	b->devs = devm_kcalloc(&b->pdev->dev, max_t(u16, count, 1),
			       sizeof(*b->devs), GFP_KERNEL);
	if (!b->devs)
		return -ENOMEM;

	pos = header_len;
	while ((ret = vfu_next_rec(buf, &pos, total_len, &r)) > 0) {
		u32 start = r.val - buf;

		if (r.type != VFU_REC_DEVICE)
			continue;
		if (n == count)
			return vfu_bad(b, "more DEVICE records than device_count %u",
				       count);
		ret = vfu_parse_device(b, n, buf, start, start + r.len,
				       &b->devs[n]);
		if (ret)
			return ret;
		n++;
	}
	if (ret < 0)
		return vfu_bad(b, "a record runs past total_len %u", total_len);
	if (n != count)
		return vfu_bad(b, "device_count %u but %u DEVICE records", count, n);
	b->nr_devs = n;
	return 0;
}

/* ---- INTx: the demultiplexing irq domain -------------------------------- */

static void vfu_write_eoi(struct vfu_bridge *b, irq_hw_number_t line)
{
	writel(line, b->page + VFU_IRQ_EOI);
}

/*
 * EOI exactness. The server keeps one platform IRQ ACTIVE at a time and, for a
 * level line, unmasks it on the device only when the line's number is written
 * to IRQ_EOI; it has no per-line mask. So:
 *
 * - Level lines use handle_fasteoi_irq and ->irq_eoi writes IRQ_EOI. The chip
 *   sets IRQCHIP_EOI_THREADED: for an IRQF_ONESHOT threaded handler the core
 *   then calls ->irq_eoi from unmask_threaded_irq(), after the thread, instead
 *   of after the hard handler; otherwise ->irq_eoi runs once the hard handler
 *   returned. Chained handlers (a GPIO block's irqchip) call ->irq_eoi from
 *   chained_irq_exit(), after they demultiplexed.
 * - ->irq_mask/->irq_unmask only track the core's mask state (nothing to mask
 *   on the server). An ->irq_eoi that comes while the line is masked (the line
 *   fired while disabled or before any handler was requested: the fasteoi flow
 *   masks it and EOIs at once) is held and written by the next ->irq_unmask.
 *   Writing it at once would let the server unmask the still-asserted device
 *   line and deliver it again, an interrupt storm for a line nobody serves.
 *   The price: while a level line is held, the server delivers no other line
 *   (docs/guest-descriptor.md, "Interrupts and the EOI").
 * - Edge lines use handle_edge_irq and ->irq_ack writes IRQ_EOI, before the
 *   handler runs, as edge flows do: an edge that comes during the handler is
 *   then delivered again rather than coalesced with the one being handled.
 *   handle_edge_irq never calls ->irq_eoi and handle_fasteoi_irq never calls
 *   ->irq_ack, so each activation gets exactly one IRQ_EOI write.
 */
static void vfu_irq_mask(struct irq_data *d)
{
	struct vfu_bridge *b = irq_data_get_irq_chip_data(d);

	set_bit(irqd_to_hwirq(d), b->masked);
}

static void vfu_irq_unmask(struct irq_data *d)
{
	struct vfu_bridge *b = irq_data_get_irq_chip_data(d);
	irq_hw_number_t hw = irqd_to_hwirq(d);

	clear_bit(hw, b->masked);
	if (test_and_clear_bit(hw, b->eoi_held))
		vfu_write_eoi(b, hw);
}

static void vfu_irq_eoi(struct irq_data *d)
{
	struct vfu_bridge *b = irq_data_get_irq_chip_data(d);
	irq_hw_number_t hw = irqd_to_hwirq(d);

	if (test_bit(hw, b->masked))
		set_bit(hw, b->eoi_held);
	else
		vfu_write_eoi(b, hw);
}

static void vfu_irq_ack(struct irq_data *d)
{
	struct vfu_bridge *b = irq_data_get_irq_chip_data(d);

	vfu_write_eoi(b, irqd_to_hwirq(d));
}

static int vfu_irq_set_type(struct irq_data *d, unsigned int type)
{
	struct vfu_bridge *b = irq_data_get_irq_chip_data(d);
	u32 want = b->line_trigger[irqd_to_hwirq(d)];
	bool level = type & IRQ_TYPE_LEVEL_MASK;

	/* The server's semantics follow the device: level stays level */
	if (want && level != !!(want & IRQ_TYPE_LEVEL_MASK))
		return -EINVAL;
	irq_set_handler_locked(d, level ? handle_fasteoi_irq : handle_edge_irq);
	return IRQ_SET_MASK_OK;
}

static const struct irq_chip vfu_irq_chip = {
	.name		= "vfu-bridge",
	.irq_ack	= vfu_irq_ack,
	.irq_mask	= vfu_irq_mask,
	.irq_unmask	= vfu_irq_unmask,
	.irq_eoi	= vfu_irq_eoi,
	.irq_set_type	= vfu_irq_set_type,
	.flags		= IRQCHIP_EOI_THREADED | IRQCHIP_SKIP_SET_WAKE,
};

static int vfu_irq_map(struct irq_domain *dom, unsigned int virq,
		       irq_hw_number_t hw)
{
	struct vfu_bridge *b = dom->host_data;

	irq_set_chip_data(virq, b);
	irq_set_chip_and_handler(virq, &vfu_irq_chip, handle_fasteoi_irq);
	irq_set_noprobe(virq);
	return 0;
}

static const struct irq_domain_ops vfu_irq_domain_ops = {
	.map	= vfu_irq_map,
	.xlate	= irq_domain_xlate_twocell,
};

/*
 * INTA, possibly shared. IRQ_ACTIVE names the one ACTIVE line; all ones means
 * none, and also what reads return once the server is gone: IRQ_NONE then, so
 * a line stuck high is caught by the core's spurious-interrupt detection. One
 * read per interrupt, no loop: the next ACTIVE line raises INTA again.
 */
static irqreturn_t vfu_intx_handler(int irq, void *data)
{
	struct vfu_bridge *b = data;
	u32 line = readl(b->page + VFU_IRQ_ACTIVE);

	if (line == VFU_NO_IRQ)
		return IRQ_NONE;
	if (line >= b->nr_lines || !b->line_trigger[line] ||
	    generic_handle_domain_irq(b->domain, line)) {
		dev_err_ratelimited(&b->pdev->dev, "IRQ line %u is not described, dropped\n",
				    line);
		vfu_write_eoi(b, line);	/* else it blocks every other line */
	}
	return IRQ_HANDLED;
}

static int vfu_setup_intx(struct vfu_bridge *b)
{
	struct pci_dev *pdev = b->pdev;
	struct device *dev = &pdev->dev;
	unsigned int line, used = 0;
	int ret;

	for (line = 0; line < b->nr_lines; line++)
		used += !!b->line_trigger[line];
	if (!used)
		return 0;	/* no IRQ records: INTx stays unused */
	if (!pdev->irq) {
		dev_err(dev, "INTx mode, but the function has no INTx\n");
		return -ENODEV;
	}
	b->fwnode = irq_domain_alloc_named_fwnode(pci_name(pdev));
	if (!b->fwnode) {
		dev_err(dev, "cannot allocate the irq domain's fwnode\n");
		return -ENOMEM;
	}
	b->domain = irq_domain_create_linear(b->fwnode, b->nr_lines,
					     &vfu_irq_domain_ops, b);
	if (!b->domain) {
		dev_err(dev, "cannot create the irq domain\n");
		return -ENOMEM;
	}
	for (line = 0; line < b->nr_lines; line++) {
		unsigned int virq;

		if (!b->line_trigger[line])
			continue;
		virq = irq_create_mapping(b->domain, line);
		if (!virq) {
			dev_err(dev, "cannot map IRQ line %u\n", line);
			return -ENOMEM;
		}
		ret = irq_set_irq_type(virq, b->line_trigger[line]);
		if (ret) {
			dev_err(dev, "IRQ line %u: trigger %u: %d\n", line,
				b->line_trigger[line], ret);
			return ret;
		}
	}

	/* From now on only our IRQ_EOI writes end an interrupt */
	writel(VFU_IRQ_CTRL_EXACT_EOI, b->page + VFU_IRQ_CTRL);
	ret = request_irq(pdev->irq, vfu_intx_handler,
			  IRQF_SHARED | IRQF_NO_THREAD, dev_name(dev), b);
	if (ret) {
		dev_err(dev, "cannot request INTx %d: %d\n", pdev->irq, ret);
		return ret;
	}
	b->intx_requested = true;
	pci_intx(pdev, 1);
	return 0;
}

static void vfu_teardown_intx(struct vfu_bridge *b)
{
	struct pci_dev *pdev = b->pdev;
	unsigned int line;

	if (b->intx_requested) {
		/* INTx off: the server drops its ACTIVE line and its queue */
		pci_intx(pdev, 0);
		free_irq(pdev->irq, b);
		b->intx_requested = false;
	}
	if (b->page)
		writel(0, b->page + VFU_IRQ_CTRL);
	if (b->domain) {
		for (line = 0; line < b->nr_lines; line++) {
			unsigned int virq = irq_find_mapping(b->domain, line);

			if (virq)
				irq_dispose_mapping(virq);
		}
		irq_domain_remove(b->domain);
		b->domain = NULL;
	}
	if (b->fwnode) {
		irq_domain_free_fwnode(b->fwnode);
		b->fwnode = NULL;
	}
}

/* ---- MSI-X: one vector per platform IRQ -------------------------------- */

static int vfu_setup_msix(struct vfu_bridge *b)
{
	struct device *dev = &b->pdev->dev;
	unsigned int i, j, n = 0;
	int count, ret;

	for (i = 0; i < b->nr_devs; i++)
		for (j = 0; j < b->devs[i].nr_irqs; j++)
			n = max(n, b->devs[i].irq[j].vector + 1);
	if (!n)
		return 0;
	count = pci_msix_vec_count(b->pdev);
	if (count < 0 || n > count) {
		dev_err(dev, "the descriptor uses %u MSI-X vectors, the function has %d\n",
			n, count);
		return -EINVAL;
	}
	ret = pci_alloc_irq_vectors(b->pdev, n, n, PCI_IRQ_MSIX);
	if (ret < 0) {
		dev_err(dev, "cannot allocate %u MSI-X vectors: %d\n", n, ret);
		return ret;
	}
	b->vectors = true;
	pci_set_master(b->pdev);
	return 0;
}

/* ---- the child devices -------------------------------------------------- */

static const struct vfu_prop *vfu_find_prop(const struct vfu_dev_desc *d,
					    const char *name, u16 type)
{
	unsigned int i;

	for (i = 0; i < d->nr_props; i++)
		if (d->prop[i].type == type && !strcmp(d->prop[i].name, name))
			return &d->prop[i];
	return NULL;
}

static unsigned long vfu_clock_rate(const struct vfu_dev_desc *d, bool *given)
{
	const struct vfu_prop *p = vfu_find_prop(d, "clock-frequency", VFU_PROP_U32);

	*given = p && get_unaligned_le32(p->val);
	return *given ? get_unaligned_le32(p->val) : VFU_DEFAULT_CLK_HZ;
}

/*
 * A fixed-rate clock for the child named dev_id, found by clk_get() as
 * "apb_pclk" (what the AMBA bus enables before probing) and by any other name,
 * NULL included (amba-pl011 takes its UART clock with a NULL con_id, 8250_dw
 * asks for "baudclk"): clkdev prefers the exact con_id and falls back to a
 * lookup without one.
 */
static int vfu_add_clock(struct vfu_bridge *b, struct vfu_child *c,
			 const char *dev_id, unsigned long rate, bool apb)
{
	struct device *dev = &b->pdev->dev;
	char *name;

	name = kasprintf(GFP_KERNEL, "%s-clk", dev_id);
	if (!name)
		return -ENOMEM;
	c->clk = clk_hw_register_fixed_rate(NULL, name, NULL, 0, rate);
	kfree(name);
	if (IS_ERR(c->clk)) {
		int ret = PTR_ERR(c->clk);

		c->clk = NULL;
		dev_err(dev, "%s: cannot register its clock: %d\n", dev_id, ret);
		return ret;
	}
	if (apb) {
		c->lookup[0] = clkdev_hw_create(c->clk, "apb_pclk", "%s", dev_id);
		if (!c->lookup[0])
			goto nomem;
	}
	c->lookup[1] = clkdev_hw_create(c->clk, NULL, "%s", dev_id);
	if (!c->lookup[1])
		goto nomem;
	return 0;
nomem:
	dev_err(dev, "%s: cannot register its clock lookup\n", dev_id);
	return -ENOMEM;
}

static void vfu_remove_clock(struct vfu_child *c)
{
	unsigned int i;

	for (i = 0; i < ARRAY_SIZE(c->lookup); i++) {
		if (c->lookup[i])
			clkdev_drop(c->lookup[i]);
		c->lookup[i] = NULL;
	}
	if (c->clk)
		clk_hw_unregister_fixed_rate(c->clk);
	c->clk = NULL;
}

/*
 * The PROPERTY records (plus "compatible" from the COMPATIBLE records when
 * asked) as a property_entry array. The device's software node copies it, so
 * vfu_free_props() runs right after the device is created.
 */
struct vfu_props {
	struct property_entry *entry;
	void *arrays[VFU_MAX_PROPS + 1];
	unsigned int nr_arrays;
};

static void vfu_free_props(struct vfu_props *p)
{
	while (p->nr_arrays)
		kfree(p->arrays[--p->nr_arrays]);
	kfree(p->entry);
	p->entry = NULL;
}

static void *vfu_props_array(struct vfu_props *p, size_t n, size_t size)
{
	void *a = kcalloc(n, size, GFP_KERNEL);

	if (a)
		p->arrays[p->nr_arrays++] = a;
	return a;
}

static int vfu_build_props(const struct vfu_dev_desc *d, bool compat,
			   struct vfu_props *p)
{
	struct property_entry *e;
	unsigned int i, k, n = 0;

	memset(p, 0, sizeof(*p));
	p->entry = kcalloc(d->nr_props + 2, sizeof(*p->entry), GFP_KERNEL);
	if (!p->entry)
		return -ENOMEM;
	e = p->entry;

	for (i = 0; i < d->nr_props; i++) {
		const struct vfu_prop *q = &d->prop[i];
		unsigned int cnt;

		switch (q->type) {
		case VFU_PROP_U32: {
			u32 *v;

			cnt = q->len / 4;
			v = vfu_props_array(p, cnt, sizeof(*v));
			if (!v)
				goto nomem;
			for (k = 0; k < cnt; k++)
				v[k] = get_unaligned_le32(q->val + 4 * k);
			e[n++] = PROPERTY_ENTRY_U32_ARRAY_LEN(q->name, v, cnt);
			break;
		}
		case VFU_PROP_U64: {
			u64 *v;

			cnt = q->len / 8;
			v = vfu_props_array(p, cnt, sizeof(*v));
			if (!v)
				goto nomem;
			for (k = 0; k < cnt; k++)
				v[k] = get_unaligned_le64(q->val + 8 * k);
			e[n++] = PROPERTY_ENTRY_U64_ARRAY_LEN(q->name, v, cnt);
			break;
		}
		case VFU_PROP_STRINGS: {
			const char **v, *s = q->val;

			for (cnt = 0, k = 0; k < q->len; k++)
				cnt += !q->val[k];
			v = vfu_props_array(p, cnt, sizeof(*v));
			if (!v)
				goto nomem;
			for (k = 0; k < cnt; k++) {
				v[k] = s;
				s += strlen(s) + 1;
			}
			e[n++] = PROPERTY_ENTRY_STRING_ARRAY_LEN(q->name, v, cnt);
			break;
		}
		case VFU_PROP_FLAG:
			e[n++] = PROPERTY_ENTRY_BOOL(q->name);
			break;
		}
	}
	if (compat) {
		const char **v = vfu_props_array(p, d->nr_compat, sizeof(*v));

		if (!v)
			goto nomem;
		for (k = 0; k < d->nr_compat; k++)
			v[k] = d->compat[k];
		e[n++] = PROPERTY_ENTRY_STRING_ARRAY_LEN("compatible", v, d->nr_compat);
	}
	return 0;
nomem:
	vfu_free_props(p);
	return -ENOMEM;
}

static struct resource *vfu_bar_res(struct vfu_bridge *b,
				    const struct vfu_region *r)
{
	return &b->pdev->resource[r->bar];
}

#if IS_ENABLED(CONFIG_ARM_AMBA)
static int vfu_add_amba(struct vfu_bridge *b, struct vfu_child *c,
			const struct vfu_dev_desc *d, struct vfu_props *props)
{
	struct device *dev = &b->pdev->dev;
	const struct vfu_region *r = &d->region[0];
	struct resource *bar = vfu_bar_res(b, r);
	struct amba_device *adev;
	unsigned long rate;
	unsigned int i;
	char *name;
	bool given;
	int ret;

	name = kasprintf(GFP_KERNEL, "%s.%d", d->name, c->id);
	if (!name)
		return -ENOMEM;
	adev = amba_device_alloc(name, bar->start + r->offset, r->size);
	kfree(name);
	if (!adev) {
		dev_err(dev, "%s: cannot allocate its AMBA device\n", d->name);
		return -ENOMEM;
	}
	adev->dev.parent = dev;
	adev->periphid = d->periphid;	/* preset: the bus reads no ID registers */
	for (i = 0; i < d->nr_irqs; i++)
		adev->irq[i] = c->irqs[i];

	if (props->entry[0].name) {
		ret = device_create_managed_software_node(&adev->dev,
							  props->entry, NULL);
		if (ret) {
			dev_err(dev, "%s: cannot attach its properties: %d\n",
				dev_name(&adev->dev), ret);
			goto put;
		}
	}
	rate = vfu_clock_rate(d, &given);
	ret = vfu_add_clock(b, c, dev_name(&adev->dev), rate, true);
	if (ret)
		goto put;
	ret = amba_device_add(adev, bar);
	if (ret) {
		dev_err(dev, "%s: cannot add its AMBA device: %d\n",
			dev_name(&adev->dev), ret);
		goto put;
	}
	c->adev = adev;
	return 0;
put:
	device_remove_software_node(&adev->dev);
	amba_device_put(adev);
	return ret;
}
#else
static int vfu_add_amba(struct vfu_bridge *b, struct vfu_child *c,
			const struct vfu_dev_desc *d, struct vfu_props *props)
{
	dev_err(&b->pdev->dev, "%s: this kernel has no AMBA bus (CONFIG_ARM_AMBA)\n",
		d->name);
	return -EOPNOTSUPP;
}
#endif

/* MEM resources nested under their BARs, then the IRQs in record order */
static unsigned int vfu_fill_res(struct vfu_bridge *b, struct vfu_child *c,
				 const struct vfu_dev_desc *d,
				 struct resource *res)
{
	unsigned int i, n = 0;

	for (i = 0; i < d->nr_regions; i++, n++) {
		const struct vfu_region *r = &d->region[i];
		struct resource *bar = vfu_bar_res(b, r);

		res[n] = DEFINE_RES_MEM_NAMED(bar->start + r->offset,
				r->size, r->name[0] ? r->name : d->name);
		res[n].parent = bar;
	}
	for (i = 0; i < d->nr_irqs; i++, n++) {
		const struct vfu_irq *q = &d->irq[i];

		res[n] = DEFINE_RES_IRQ_NAMED(c->irqs[i],
				q->name[0] ? q->name : NULL);
		/* MSI-X vectors are edge; only the domain's lines carry a type */
		if (b->irq_mode == 0)
			res[n].flags |= q->trigger & IORESOURCE_BITS;
	}
	return n;
}

static int vfu_add_platform(struct vfu_bridge *b, struct vfu_child *c,
			    const struct vfu_dev_desc *d, struct vfu_props *props)
{
	struct resource res[VFU_MAX_REGIONS + VFU_MAX_IRQS];
	struct device *dev = &b->pdev->dev;
	struct platform_device *pdev;
	unsigned long rate;
	unsigned int n;
	char *name;
	bool given;
	int ret;

	n = vfu_fill_res(b, c, d, res);
	/* platform_device_add() names it so: known before it probes */
	name = kasprintf(GFP_KERNEL, "%s.%d", d->name, c->id);
	if (!name)
		return -ENOMEM;
	rate = vfu_clock_rate(d, &given);
	ret = given ? vfu_add_clock(b, c, name, rate, false) : 0;
	if (ret)
		goto out;

	if (d->bind == VFU_BIND_PLATFORM_NAME) {
		struct platform_device_info info = {
			.parent = dev,
			.name = d->name,
			.id = c->id,
			.res = res,
			.num_res = n,
			.properties = props->entry[0].name ? props->entry : NULL,
		};

		pdev = platform_device_register_full(&info);
		if (IS_ERR(pdev)) {
			ret = PTR_ERR(pdev);
			dev_err(dev, "%s: cannot register its platform device: %d\n",
				name, ret);
			goto out;
		}
	} else {
		/*
		 * DT_COMPATIBLE without OF_DYNAMIC: the driver named NAME, forced
		 * by driver_override; it sees "compatible" and the PROPERTY
		 * records through the fwnode property API only.
		 */
		pdev = platform_device_alloc(d->name, c->id);
		if (!pdev) {
			ret = -ENOMEM;
			dev_err(dev, "%s: cannot allocate its platform device\n", name);
			goto out;
		}
		pdev->dev.parent = dev;
		ret = platform_device_add_resources(pdev, res, n);
		if (!ret)
			ret = device_set_driver_override(&pdev->dev, d->name);
		if (!ret)
			ret = device_create_managed_software_node(&pdev->dev,
								  props->entry, NULL);
		if (!ret)
			ret = platform_device_add(pdev);
		if (ret) {
			dev_err(dev, "%s: cannot add its platform device: %d\n",
				name, ret);
			device_remove_software_node(&pdev->dev);
			platform_device_put(pdev);
			goto out;
		}
	}
	c->pdev = pdev;
out:
	kfree(name);
	return ret;
}

static void vfu_remove_child(struct vfu_child *c)
{
	if (c->adev) {
#if IS_ENABLED(CONFIG_ARM_AMBA)
		amba_device_unregister(c->adev);
#endif
		c->adev = NULL;
	}
	if (c->pdev) {
		platform_device_unregister(c->pdev);
		c->pdev = NULL;
	}
	vfu_remove_clock(c);
	if (c->id >= 0)
		ida_free(&vfu_child_ida, c->id);
	c->id = -1;
}

static int vfu_add_child(struct vfu_bridge *b, struct vfu_child *c,
			 const struct vfu_dev_desc *d)
{
	struct vfu_props props;
	unsigned int i;
	int ret;

	for (i = 0; i < d->nr_irqs; i++) {
		const struct vfu_irq *q = &d->irq[i];

		if (b->irq_mode == 0)
			ret = irq_find_mapping(b->domain, q->line);
		else
			ret = pci_irq_vector(b->pdev, q->vector);
		if (ret <= 0) {
			dev_err(&b->pdev->dev, "%s: no Linux IRQ for line %u\n",
				d->name, q->line);
			return ret ? ret : -EINVAL;
		}
		c->irqs[i] = ret;
	}

	ret = ida_alloc(&vfu_child_ida, GFP_KERNEL);
	if (ret < 0) {
		dev_err(&b->pdev->dev, "%s: no device id: %d\n", d->name, ret);
		return ret;
	}
	c->id = ret;

	ret = vfu_build_props(d, d->bind == VFU_BIND_DT_COMPATIBLE, &props);
	if (ret) {
		dev_err(&b->pdev->dev, "%s: cannot build its properties: %d\n",
			d->name, ret);
		goto fail;
	}
	if (d->bind == VFU_BIND_AMBA)
		ret = vfu_add_amba(b, c, d, &props);
	else
		ret = vfu_add_platform(b, c, d, &props);
	vfu_free_props(&props);
	if (ret)
		goto fail;
	return 0;
fail:
	vfu_remove_child(c);
	return ret;
}

/* ---- probe and remove --------------------------------------------------- */

/* The first vendor-specific capability with our type and signature, or 0 */
static u8 vfu_find_cap(struct pci_dev *pdev)
{
	u8 pos = pci_find_capability(pdev, PCI_CAP_ID_VNDR);

	while (pos && pos <= PCI_CFG_SPACE_SIZE - VFU_CAP_LEN) {
		u8 len, type;
		u32 sig;

		pci_read_config_byte(pdev, pos + VFU_CAP_LEN_OFF, &len);
		pci_read_config_byte(pdev, pos + VFU_CAP_TYPE_OFF, &type);
		pci_read_config_dword(pdev, pos + VFU_CAP_SIG_OFF, &sig);
		if (len >= VFU_CAP_LEN && type == VFU_CAP_TYPE_DESC &&
		    sig == VFU_MAGIC)
			return pos;
		pos = pci_find_next_capability(pdev, pos, PCI_CAP_ID_VNDR);
	}
	return 0;
}

static void vfu_teardown(struct vfu_bridge *b)
{
	struct pci_dev *pdev = b->pdev;

	/* Children first: their drivers free their IRQs and clocks */
	while (b->nr_children)
		vfu_remove_child(&b->children[--b->nr_children]);
	if (b->irq_mode == 0) {
		vfu_teardown_intx(b);
	} else if (b->vectors) {
		pci_free_irq_vectors(pdev);
		b->vectors = false;
	}
	pci_clear_master(pdev);
	if (b->page) {
		pci_iounmap(pdev, b->page);
		b->page = NULL;
		pci_release_region(pdev, b->page_bar);
	}
	pci_disable_device(pdev);
}

static int vfu_bridge_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct device *dev = &pdev->dev;
	u32 offset, length, i;
	struct vfu_bridge *b;
	u8 pos, bar, version;
	int ret;

	pos = vfu_find_cap(pdev);
	if (!pos)
		return -ENODEV;	/* not a vfu-platform bridge */

	pci_read_config_byte(pdev, pos + VFU_CAP_BAR_OFF, &bar);
	pci_read_config_byte(pdev, pos + VFU_CAP_VER_OFF, &version);
	pci_read_config_dword(pdev, pos + VFU_CAP_OFFSET_OFF, &offset);
	pci_read_config_dword(pdev, pos + VFU_CAP_LENGTH_OFF, &length);
	if (version != VFU_VERSION) {
		dev_err(dev, "descriptor version %u, this driver knows %u\n",
			version, VFU_VERSION);
		return -EINVAL;
	}
	if (bar >= PCI_STD_NUM_BARS ||
	    resource_type(&pdev->resource[bar]) != IORESOURCE_MEM ||
	    pci_resource_len(pdev, bar) < VFU_PAGE_MIN ||
	    length < VFU_HDR_LEN || length > VFU_DESC_MAX || length % 4 ||
	    length > pci_resource_len(pdev, bar) || offset % 4 ||
	    offset > pci_resource_len(pdev, bar) - length) {
		dev_err(dev, "invalid descriptor: capability: BAR %u offset %#x length %u\n",
			bar, offset, length);
		return -EINVAL;
	}

	b = devm_kzalloc(dev, sizeof(*b), GFP_KERNEL);
	if (!b)
		return -ENOMEM;
	b->pdev = pdev;
	b->page_bar = bar;

	ret = pci_enable_device(pdev);
	if (ret) {
		dev_err(dev, "cannot enable the function: %d\n", ret);
		return ret;
	}
	ret = pci_request_region(pdev, bar, KBUILD_MODNAME);
	if (ret) {
		dev_err(dev, "cannot claim the IRQ page BAR %u: %d\n", bar, ret);
		pci_disable_device(pdev);
		return ret;
	}
	b->page = pci_iomap(pdev, bar, 0);
	if (!b->page) {
		dev_err(dev, "cannot map the IRQ page BAR %u\n", bar);
		ret = -ENOMEM;
		goto fail_region;
	}

	if (readl(b->page + VFU_PAGE_MAGIC) != VFU_PAGE_MAGIC_VALUE) {
		dev_err(dev, "BAR %u is not an IRQ page (magic %#x)\n", bar,
			readl(b->page + VFU_PAGE_MAGIC));
		ret = -EINVAL;
		goto fail;
	}
	b->nr_lines = readl(b->page + VFU_IRQ_LINES);
	if (b->nr_lines > VFU_MAX_LINES) {
		dev_err(dev, "IRQ page: %u lines, this driver takes %d\n",
			b->nr_lines, VFU_MAX_LINES);
		ret = -EINVAL;
		goto fail;
	}

	/* Every access is a trapped round trip to the server: read it once */
	b->desc = devm_kmalloc(dev, length, GFP_KERNEL);
	b->line_trigger = devm_kcalloc(dev, max(b->nr_lines, 1U),
				       sizeof(*b->line_trigger), GFP_KERNEL);
	b->masked = devm_bitmap_zalloc(dev, max(b->nr_lines, 1U), GFP_KERNEL);
	b->eoi_held = devm_bitmap_zalloc(dev, max(b->nr_lines, 1U), GFP_KERNEL);
	if (!b->desc || !b->line_trigger || !b->masked || !b->eoi_held) {
		ret = -ENOMEM;
		goto fail;
	}
	bitmap_fill(b->masked, b->nr_lines);	/* as the irq core starts them */
	for (i = 0; i < length; i += 4)
		put_unaligned_le32(readl(b->page + offset + i), b->desc + i);

	ret = vfu_parse(b, length);
	if (ret)
		goto fail;
	if (b->irq_mode == 0) {
		ret = vfu_check_lines(b);
		if (!ret)
			ret = vfu_setup_intx(b);
	} else {
		ret = vfu_setup_msix(b);
	}
	if (ret)
		goto fail;

	b->children = devm_kcalloc(dev, max(b->nr_devs, 1U),
				   sizeof(*b->children), GFP_KERNEL);
	if (!b->children) {
		ret = -ENOMEM;
		goto fail;
	}
	for (i = 0; i < b->nr_devs; i++) {
		b->children[i].id = -1;
		ret = vfu_add_child(b, &b->children[i], &b->devs[i]);
		if (ret)
			goto fail;
		b->nr_children++;
	}

	pci_set_drvdata(pdev, b);
	dev_info(dev, "%u devices, %s\n", b->nr_devs,
		 b->irq_mode ? "MSI-X" : "INTx");
	return 0;

fail:
	vfu_teardown(b);
	return ret;
fail_region:
	pci_release_region(pdev, bar);
	pci_disable_device(pdev);
	return ret;
}

static void vfu_bridge_remove(struct pci_dev *pdev)
{
	vfu_teardown(pci_get_drvdata(pdev));
}

/* Any vendor and device: the capability, not the ID, says it is ours */
static const struct pci_device_id vfu_bridge_ids[] = {
	{ PCI_DEVICE_CLASS(0x088000, 0xffffff) },
	{ }
};
MODULE_DEVICE_TABLE(pci, vfu_bridge_ids);

static struct pci_driver vfu_bridge_driver = {
	.name		= "vfu_bridge",
	.id_table	= vfu_bridge_ids,
	.probe		= vfu_bridge_probe,
	.remove		= vfu_bridge_remove,
};
module_pci_driver(vfu_bridge_driver);

MODULE_DESCRIPTION("vfu-platform bridge: platform devices behind a vfio-user PCI function");
MODULE_LICENSE("Dual BSD/GPL");
