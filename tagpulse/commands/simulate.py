"""`tagpulse simulate`: deterministic simulated posts as canonical JSONL.

    tagpulse simulate einbuchfuerkai [--seed N] [--out FILE]   the 2015 seed campaign (producers/simulate.py)
    tagpulse simulate synthetic --posts N [--seed N] [--out FILE]   a generic stream for benchmarks

Hashtags are canonical keys under the user's alias table ($TAGPULSE_HOME/aliases.json), the same
table `tagpulse produce` and the stream apply; `tagpulse demo` adds einbildfuerkai → einbuchfuerkai.
"""
from __future__ import annotations

import os
import sys

HELP = "write a deterministic simulated post stream (the #einBuchfuerKai campaign, or synthetic) as canonical JSONL"

SCENARIOS = ("einbuchfuerkai", "synthetic")


def add_arguments(parser) -> None:
    parser.add_argument("scenario", choices=SCENARIOS,
                        help="einbuchfuerkai: the 2015 campaign, 2015-05-20 … 05-23 UTC; synthetic: Zipf tags, "
                             "heavy-tailed followers, duplicates and disorder (for benchmarks)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0); same seed, same output")
    parser.add_argument("--out", metavar="FILE", help="write to FILE instead of stdout")
    parser.add_argument("--posts", type=int, default=100_000, metavar="N",
                        help="synthetic only: deliveries to write, duplicates included (default 100000)")
    parser.add_argument("--tags", type=int, default=1_000, metavar="N",
                        help="synthetic only: size of the tag vocabulary (default 1000)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no summary on stderr")


def run(args) -> int:
    from producers import simulate as sim
    from tagpulse import config

    if args.posts < 0 or args.tags < 1:
        print("tagpulse simulate: --posts must be ≥ 0 and --tags ≥ 1", file=sys.stderr)
        return 2
    settings = config.load()
    aliases = _apply_user_aliases(settings)
    if aliases is None:
        return 1

    if args.scenario == "einbuchfuerkai":
        seen: list[dict] = []

        def posts():
            for post in sim.simulate_einbuchfuerkai(seed=args.seed):
                seen.append(post)
                yield post
        stream = posts()
    else:
        seen = []
        stream = sim.synthetic_posts(args.posts, seed=args.seed, tags=args.tags)

    try:
        written = _write(stream, args.out)
    except BrokenPipeError:
        raise               # `tagpulse simulate … | head`: the CLI ends quietly
    except OSError as exc:
        print(f"tagpulse simulate: cannot write {args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if args.quiet:
        return 0
    where = args.out or "stdout"
    if args.scenario == "einbuchfuerkai":
        f = sim.campaign_figures(seen)
        merged = aliases.resolve("einbildfuerkai") == sim.CAMPAIGN_TAG
        print(f"tagpulse simulate: wrote {written} posts to {where} ({f.unique_posts} unique, {f.duplicates} "
              f"duplicate deliveries, disorder ≤ {f.max_disorder_s} s)\n"
              f"  #{sim.CAMPAIGN_TAG}: facebook {f.facebook_posts} posts ({f.facebook_shares} shares), "
              f"twitter {f.twitter_posts} posts with {f.twitter_impressions_by:,} impressions by "
              f"{sim.IMPRESSIONS_AT_ISO}, instagram {f.instagram_posts} posts "
              f"({'with' if merged else 'without'} the alias einbildfuerkai → einbuchfuerkai)", file=sys.stderr)
    else:
        print(f"tagpulse simulate: wrote {written} posts to {where}", file=sys.stderr)
    return 0


def _apply_user_aliases(settings):
    """The user's alias table, made active; None (after a message) if it cannot be read."""
    from tagpulse.core.hashtags import AliasTable, get_aliases, set_aliases

    path = settings.home / "aliases.json"
    if path.exists():
        try:
            set_aliases(AliasTable.load(path))
        except (OSError, ValueError) as exc:
            print(f"tagpulse simulate: cannot read the alias table {path}: {exc}", file=sys.stderr)
            return None
    return get_aliases()


def _write(stream, out: str | None) -> int:
    from producers.simulate import write_jsonl

    if out is None or out == "-":
        written = write_jsonl(stream, sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return written
    # write next to the target and rename, so an interrupted run never leaves half a file
    tmp = f"{out}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as handle:
            written = write_jsonl(stream, handle)
        os.replace(tmp, out)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return written
