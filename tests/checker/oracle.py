"""A deliberately simple oracle: ``dma_after_free`` re-derived from the monitor's raw event log
and the scenario text alone - no ledger, no epochs, no owners - to check the checker's own
bookkeeping.  Rule: a successful DMA of a device is bad if one of its pages was never mapped
into a domain the device was attached to, or was freed after the last such map."""

from __future__ import annotations


def initial_events(sc, pages: dict) -> list:
    """The set-up as events: every domain's devices, every set-up map and attach."""
    found = [("attach", dev, None, dom.name) for dom in sc.domains for dev in dom.devices]
    for o in sc.setup_ops:
        if o.kind in ("map", "dma_map"):
            found.append(("grant", o["domain"], pages[o["page"]]))
        elif o.kind in ("attach", "set_dev_pasid"):
            found.append(("attach", o["device"], o.args.get("pasid"), o["domain"]))
    return found


def bad_dmas(events: list) -> list:
    attached: dict = {}  # (device, pasid) -> domains
    history: dict = {}  # page -> list of ("grant", domain) / ("free",)
    bad = []
    for event in events:
        if event[0] == "attach":
            attached.setdefault((event[1], event[2]), set()).add(event[3])
        elif event[0] == "grant":
            history.setdefault(event[2], []).append(("grant", event[1]))
        elif event[0] == "free":
            history.setdefault(event[1], []).append(("free",))
        elif event[0] == "dma":
            domains = attached.get((event[1], event[2]), set())
            for page in event[3]:
                if not _still_owned(history.get(page, []), domains):
                    bad.append(event)
    return bad


def _still_owned(page_history: list, domains: set) -> bool:
    last = None
    for i, entry in enumerate(page_history):
        if entry[0] == "grant" and entry[1] in domains:
            last = i
    return last is not None and all(e[0] != "free" for e in page_history[last + 1:])
