"""PR-merge digest: merged pull requests per repository, one digest per batch
(after 10 merges, or when the hour is up; see rule.toml)."""

from dataclasses import dataclass
from typing import List, Optional

from sluice_rule import Batch, Event, Fatal, Level, Rule, emit, export, log, reason_name


@dataclass
class Merged:
    """The part of a `pull_request.merged` payload the digest reads."""

    number: int
    title: Optional[str]
    author: Optional[str]

    @classmethod
    def parse(cls, event: Event) -> "Merged":
        payload = event.json()
        number = payload.get("number")
        # bool is an int in Python; a JSON true is not a PR number.
        if not isinstance(number, int) or isinstance(number, bool) or number < 0:
            raise Fatal(f"event {event.id}: no pull request number")
        title = payload.get("title")
        author = payload.get("author")
        return cls(
            number,
            title if isinstance(title, str) else None,
            author if isinstance(author, str) else None,
        )


def repo_of(event: Event) -> Optional[str]:
    # Declared in rule.toml (`[select] fields`): parsed by the engine.
    repo = event.field("/repo")
    return repo if isinstance(repo, str) else None


WHY = {"count-reached": "count reached", "window-expired": "window expired"}


class PrDigest(Rule):
    def filter(self, event: Event) -> bool:
        return event.kind == "pull_request.merged"

    def partition_key(self, event: Event) -> Optional[str]:
        # A payload without a string `repo` goes to the global partition
        # rather than being dropped: the digest says the repo is unknown.
        return repo_of(event)

    def handle_batch(self, batch: Batch) -> list:
        prs = []
        authors: List[str] = []
        for event in batch.events:
            m = Merged.parse(event)
            prs.append({"number": m.number, "title": m.title})
            if m.author is not None and m.author not in authors:
                authors.append(m.author)
        why = WHY.get(reason_name(batch.reason), "flushed")
        repo = batch.partition if batch.partition is not None else "unknown repository"
        log(Level.INFO, f"digest for {repo}: {len(prs)} merges ({why})")
        return [
            emit(
                "pr.digest",
                {
                    "repo": batch.partition,
                    "merged": len(prs),
                    "pull_requests": prs,
                    "authors": authors,
                    "reason": why,
                },
            )
        ]


Guest = export(PrDigest)
