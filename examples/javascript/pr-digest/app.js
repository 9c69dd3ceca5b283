// PR-merge digest: merged pull requests per repository, one digest per
// batch (after 10 merges, or when the hour is up; see rule.toml).

import { exportRule, emit, log, Fatal } from "../sluice.js";

const WHY = { "count-reached": "count reached", "window-expired": "window expired" };

// A payload without a string `repo` goes to the global partition rather
// than being dropped: the digest says the repository is unknown. Declared
// in rule.toml (`[select] fields`), `repo` arrives parsed by the engine.
const repoOf = (event) => {
  const repo = event.field("/repo");
  return typeof repo === "string" ? repo : undefined;
};

const stringOrNull = (v) => (typeof v === "string" ? v : null);

function merged(event) {
  const { number, title, author } = event.json();
  if (!Number.isSafeInteger(number) || number < 0) {
    throw new Fatal(`event ${event.id}: no pull request number`);
  }
  return { number, title: stringOrNull(title), author: stringOrNull(author) };
}

export const { filter, partitionKey, membership, select, handleBatch, projection } = exportRule({
  filter: (event) => event.kind === "pull_request.merged",

  partitionKey: repoOf,

  handleBatch(batch) {
    const prs = [];
    const authors = [];
    for (const event of batch.events) {
      const m = merged(event);
      prs.push({ number: m.number, title: m.title });
      if (m.author !== null && !authors.includes(m.author)) authors.push(m.author);
    }
    const why = WHY[batch.reason.tag] ?? "flushed";
    log("info", `digest for ${batch.partition ?? "unknown repository"}: ${prs.length} merges (${why})`);
    return [
      emit("pr.digest", {
        repo: batch.partition,
        merged: prs.length,
        pull_requests: prs,
        authors,
        reason: why,
      }),
    ];
  },
});
