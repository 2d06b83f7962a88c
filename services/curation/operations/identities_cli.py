"""`whaleid individuals merge A --into B | rename A NEW | undo MERGE_ID | log [--individual ID] | similar`.

The same rules and Redis records as the gateway's routes (services.curation.operations.identities); the researcher recorded
is `--researcher` (default: $WHALEID_RESEARCHER, else $USER). Refusals exit 2 with the reason.
"""

from __future__ import annotations

import json
import os


def register(subparsers) -> None:
    p = subparsers.add_parser("individuals", help="merge and rename individuals (with undo); too similar ones")
    sub = p.add_subparsers(dest="individuals_command", metavar="ACTION", required=True)

    def common(sp, researcher: bool = True):
        if researcher:
            sp.add_argument("--researcher", default=os.environ.get("WHALEID_RESEARCHER") or os.environ.get("USER")
                            or "", help="who does it (recorded in the log)")
        sp.add_argument("--json", action="store_true", help="print the result as JSON")

    sp = sub.add_parser("merge", help="merge individual A into B: every past decision and gallery entry follows")
    sp.add_argument("individual")
    sp.add_argument("--into", required=True, help="the surviving individual id")
    sp.add_argument("--note", default="", help="why (kept in the log)")
    common(sp)
    sp.set_defaults(func=_merge)
    sp = sub.add_parser("rename", help="give individual A a new name (refused when the name exists)")
    sp.add_argument("individual")
    sp.add_argument("new_id")
    sp.add_argument("--note", default="", help="why (kept in the log)")
    common(sp)
    sp.set_defaults(func=_rename)
    sp = sub.add_parser("undo", help="undo a merge or rename by its id (m-...)")
    sp.add_argument("merge_id")
    common(sp)
    sp.set_defaults(func=_undo)
    sp = sub.add_parser("log", help="merges and renames, newest first")
    sp.add_argument("--individual", default=None, help="only those involving this id")
    sp.add_argument("--limit", type=int, default=50)
    common(sp, researcher=False)
    sp.set_defaults(func=_log)
    sp = sub.add_parser("similar", help="catalogued individuals too similar to each other (served gallery)")
    sp.add_argument("--limit", type=int, default=50)
    common(sp, researcher=False)
    sp.set_defaults(func=_similar)


def _service():
    from services.curation.operations.cli import _redis, _settings, _store
    from services.curation.operations.identities import IdentityService
    from services.curation.operations.known import CurrentGalleryIndividuals

    settings = _settings()
    store = _store(settings)
    return IdentityService(_redis(settings), CurrentGalleryIndividuals(store),
                           log_maxlen=settings.redis_audit_maxlen), store


def _print_op(op, as_json: bool, verb: str) -> int:
    if as_json:
        print(json.dumps(op.asdict(), indent=2))
    else:
        print(f"{verb} {op.source} -> {op.target} ({op.kind} {op.merge_id}, by {op.researcher}); "
              + ("run `whaleid reindex` to publish the gallery with it" if verb != "undid"
                 else "the next `whaleid reindex` restores both ids"))
    return 0


def _note(args) -> dict:
    return {"note": args.note} if args.note else {}


def _merge(args) -> int:
    service, _ = _service()
    return _print_op(service.merge(args.individual, {"into": args.into, **_note(args)}, args.researcher),
                     args.json, "merged")


def _rename(args) -> int:
    service, _ = _service()
    return _print_op(service.rename(args.individual, {"new_id": args.new_id, **_note(args)}, args.researcher),
                     args.json, "renamed")


def _undo(args) -> int:
    service, _ = _service()
    return _print_op(service.undo(args.merge_id, args.researcher), args.json, "undid")


def _log(args) -> int:
    service, _ = _service()
    ops = service.operations(args.individual, args.limit)
    if args.json:
        print(json.dumps({"operations": [op.asdict() for op in ops]}, indent=2))
        return 0
    from services.curation.operations.cli import _stamp

    if not ops:
        print("no merges or renames")
    for op in ops:
        state = f" (undone by {op.undone_by} {_stamp(op.undone_at or 0)})" if op.undone else ""
        print(f"{op.merge_id}  {_stamp(op.at)}  {op.kind:6} {op.source} -> {op.target}  by {op.researcher}{state}")
    return 0


def _similar(args) -> int:
    from services.curation.operations.identities import ServedSimilarities

    service, store = _service()
    version, threshold, pairs = ServedSimilarities(store, service.redis)(limit=args.limit)
    if args.json:
        print(json.dumps({"gallery_version": version, "threshold": threshold, "pairs": pairs}, indent=2))
        return 0
    print(f"gallery {version}: {len(pairs)} pair(s) of individuals at or above their threshold "
          f"(global {threshold:.3f})")
    for pair in pairs:
        print(f"  {pair['a']}  {pair['b']}  {pair['score']:.3f} >= {pair['threshold']:.3f}  "
              f"({pair['species'][0]}/{pair['species'][1]}, {pair['photos'][0]}+{pair['photos'][1]} photos)")
    return 0
