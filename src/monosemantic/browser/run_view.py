"""What the browser shows of a run, as plain JSON-ready dicts: the overview, pages of the feature
list, and one unit's dashboard — read from ``run.json``, the feature store and the splitting output.

The web app (``browser/app.py``) and the static export (``browser/export.py``) both render these
dicts, so the live site and the exported one show the same numbers. A lookup that misses (unknown
dictionary, unit id out of range, a file outside the run's pictures) raises ``NotFound``.
"""

from __future__ import annotations

import json
import threading
from functools import cached_property
from pathlib import Path
from typing import Any

from monosemantic.analysis.store import FILENAME, NEURONS, UNIT_LIST_COLUMNS, FeatureStore, UnitValue
from monosemantic.errors import UserError
from monosemantic.integrity import verify_run
from monosemantic.pipeline import RunDir

SORT_COLUMNS = UNIT_LIST_COLUMNS
PICTURE_DIRS = ("plots", "toy", "splitting", "feature_map", "analysis", "universality")
PICTURE_TYPES = {".png": "image/png", ".svg": "image/svg+xml"}
MAX_PAGE = 200
FAMILY_CHILDREN = 24  # descendants listed per larger dictionary on a feature page


class NotFound(LookupError):
    """A dictionary, unit or file the run does not have (the app answers 404)."""


class RunView:
    """Read-only views of one run directory for the browser.

    Each thread gets its own read-only SQLite connection (the app answers requests from a
    thread pool, and a connection's cursors must not interleave across threads).
    """

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir)
        if not self.path.is_dir():
            raise UserError(f"run directory {self.path}: not found")
        self.manifest = RunDir(self.path).manifest
        verify_run(self.path, self.manifest)
        FeatureStore(self.path / FILENAME).close()  # fail now, with one clear line, if it is missing or foreign
        self._local = threading.local()
        self.dicts = {d["name"]: d for d in self.store.dictionaries()}
        for entry in self.manifest.get("sae", {}).get("saes", []):  # its hook point; one trained elsewhere says so
            if entry["name"] in self.dicts:
                self.dicts[entry["name"]].update(hook_name=entry.get("hook_name"))
                if "foreign" in entry:
                    self.dicts[entry["name"]]["foreign"] = entry["foreign"]

    @property
    def store(self) -> FeatureStore:
        if not hasattr(self._local, "store"):
            self._local.store = FeatureStore(self.path / FILENAME)
        return self._local.store

    def dictionary(self, name: str) -> dict[str, Any]:
        if name not in self.dicts:
            raise NotFound(f"unknown dictionary {name!r} (have: {', '.join(self.dicts)})")
        return self.dicts[name]

    def check_unit(self, dict_name: str, unit: int) -> dict[str, Any]:
        d = self.dictionary(dict_name)
        if not 0 <= unit < d["n_units"]:
            raise NotFound(f"{dict_name} has {d['unit_kind']}s 0…{d['n_units'] - 1}, not {unit}")
        return d

    # --- overview -------------------------------------------------------------------------------

    def overview(self) -> dict[str, Any]:
        """The LM, every SAE's metrics, the interpretability comparison and the run's pictures."""
        m = self.manifest
        lm = {
            k: m.get("lm", {}).get(k)
            for k in ("val_loss", "unigram_loss", "bigram_loss", "n_params", "steps", "train_tokens", "external")
        }
        lm_config = m.get("config", {}).get("lm", {})
        lm["shape"] = {k: lm_config.get(k) for k in ("n_layers", "d_model", "d_mlp", "n_heads", "n_ctx", "hook_name")}
        lm["shape"].update(m.get("lm", {}).get("shape", {}))  # an external model's own shape
        metrics = {e["name"]: e for e in m.get("sae", {}).get("saes", [])}
        analysis = m.get("analysis", {}).get("dictionaries", {})
        dictionaries = []
        for name, d in self.dicts.items():
            e = metrics.get(name, {})
            dictionaries.append(
                {
                    **d,
                    "alive": analysis.get(name, {}).get("alive"),
                    "mean_density": analysis.get(name, {}).get("mean_density"),
                    **{
                        k: e.get(k)
                        for k in (
                            "l0",
                            "fvu",
                            "loss_recovered",
                            "loss_recovered_mean_ablation",
                            "dead_frac",
                            "dense_frac",
                            "train_seconds",
                            "density_log10_hist",
                            "density_plot",
                        )
                    },
                    **self.store.score_summary(name),
                }
            )
        a = m.get("analysis", {})
        return {
            "run": self.path.name,
            "corpus": m.get("corpus", {}),
            "lm": lm,
            "dictionaries": dictionaries,
            "interpretability": {
                k: a.get(k)
                for k in (
                    "backend",
                    "n_scored_units",
                    "feature_dictionary",
                    "neuron_score_mean",
                    "neuron_score_median",
                    "feature_score_mean",
                    "feature_score_median",
                    "neuron_detection_mean",
                    "feature_detection_mean",
                    "score_plot",
                )
            },
            "universality": {
                k: m.get("universality", {}).get(k)
                for k in (
                    "median_feature_corr",
                    "median_neuron_corr",
                    "paper_median_feature_corr",
                    "paper_median_neuron_corr",
                )
            },
            "splitting": m.get("splitting", {}).get("summary", [])
            + [
                {**row, "hook_name": hook}
                for hook, figures in m.get("splitting", {}).get("by_hook", {}).items()
                for row in figures["summary"]
            ],
            "toy": [p for p in m.get("toy", {}).get("points", [])],
            "pictures": self.pictures(),
        }

    def pictures(self) -> dict[str, list[str]]:
        """The run's plots by folder, as paths relative to the run directory."""
        found = {}
        for folder in PICTURE_DIRS:
            files = sorted(p for p in (self.path / folder).glob("*") if p.suffix == ".png")
            if files:
                found[folder] = [f"{folder}/{p.name}" for p in files]
        return found

    def picture(self, rel: str) -> Path:
        """The file at ``rel`` if it is a picture in one of the run's picture folders."""
        parts = Path(rel).parts
        if len(parts) != 2 or parts[0] not in PICTURE_DIRS or Path(rel).suffix not in PICTURE_TYPES:
            raise NotFound(f"no picture {rel!r}")
        try:  # a NUL byte or an over-long name makes the OS calls raise: no such picture either way
            path = (self.path / rel).resolve()
            if path.parent != (self.path / parts[0]).resolve() or not path.is_file():
                raise NotFound(f"no picture {rel!r}")
        except (OSError, ValueError):
            raise NotFound(f"no picture {rel!r}") from None
        return path

    # --- feature list ---------------------------------------------------------------------------

    def unit_list(
        self,
        dict_name: str,
        sort: str = "simulation_score",
        descending: bool = True,
        offset: int = 0,
        limit: int = 50,
        text: str | None = None,
        token: str | None = None,
        min_density: float = 0.0,
        max_density: float = 1.0,
        min_score: float | None = None,
    ) -> dict[str, Any]:
        """One page of a dictionary's units, filtered and sorted, with the total that match.

        ``text`` keeps units whose explanation contains it; ``token`` keeps units that fire on that
        token and adds ``f1``, the harmonic mean of precision (activation on it / all activation)
        and recall (fires on it / its count), as ``FeatureStore.search_token`` ranks them.
        """
        self.dictionary(dict_name)
        if not 1 <= limit <= MAX_PAGE:
            raise UserError(f"limit={limit}: must be 1…{MAX_PAGE}")
        ids = self.store.tokens_matching(token) if token else None
        if ids == []:
            if sort not in SORT_COLUMNS:
                raise UserError(f"sort={sort}: choose from {', '.join(SORT_COLUMNS)}")
            return {"dict": dict_name, "total": 0, "offset": offset, "rows": [], "matched_tokens": []}
        rows, total = self.store.unit_list(
            dict_name, sort, descending, offset, limit, text, ids, min_density, max_density, min_score
        )
        labels = self.store.labels(dict_name, [r["unit"] for r in rows])
        for r in rows:
            r["top_tokens"] = labels.get(r["unit"], [])
        matched = [self.store.token_text(t) for t in ids or []]
        return {"dict": dict_name, "total": total, "offset": offset, "rows": rows, "matched_tokens": matched}

    def token_index(self, dict_name: str) -> dict[str, list[list]]:
        """Every vocabulary text → ``[unit, f1]``: ``unit_list(token=…)``'s matches and ranking, for
        a page that has no server (the static export)."""
        return self.store.token_index(dict_name)

    def labels(self, dict_name: str, units: list[int], n: int = 3) -> dict[int, list[str]]:
        return self.store.labels(dict_name, units, n)

    # --- one unit -------------------------------------------------------------------------------

    def unit_page(self, dict_name: str, unit: int) -> dict[str, Any]:
        """A feature's or neuron's dashboard: the store's page, with its examples grouped by kind,
        labelled neighbours, constituent neurons (features) or the features using it (neurons), and
        its split family across dictionary sizes."""
        d = self.check_unit(dict_name, unit)
        page = self.store.feature_page(dict_name, unit)
        examples = page.pop("examples")
        page["dictionary"] = d
        page["top_examples"] = [e for e in examples if e["kind"] == "top"]
        page["random_examples"] = [e for e in examples if e["kind"] == "random"]
        intervals: dict[int, list[dict]] = {}
        for e in examples:
            if e["kind"] == "interval":
                intervals.setdefault(e["bucket"], []).append(e)
        page["intervals"] = [
            {
                "bucket": b,
                "low": min(e["activation"] for e in ex),
                "high": max(e["activation"] for e in ex),
                "examples": ex,
            }
            for b, ex in sorted(intervals.items(), reverse=True)
        ]
        for kind in ("decoder", "cofiring"):
            page[f"{kind}_neighbours"] = self._labelled(dict_name, page.pop(f"{kind}_neighbours"))
        if d["unit_kind"] == "feature":
            constituents = page.pop("constituents")
            page["constituents"] = (
                self._labelled(NEURONS, constituents)
                if NEURONS in self.dicts
                else [{**c._asdict(), "label": []} for c in constituents]
            )
            page["family"] = self.family(dict_name, unit)
        else:
            page["used_by"] = {
                name: self._labelled(name, self.store.neuron_users(name, unit))
                for name, other in self.dicts.items()
                if other["unit_kind"] == "feature"
            }
        page["top_tokens"] = [t._asdict() for t in page["top_tokens"]]
        return page

    def _labelled(self, dict_name: str, linked: list[UnitValue]) -> list[dict[str, Any]]:
        """Links to units of ``dict_name``, each with its label."""
        labels = self.labels(dict_name, [link.unit for link in linked])
        return [{**link._asdict(), "label": labels.get(link.unit, [])} for link in linked]

    @cached_property
    def _families(self) -> dict[str, Any] | None:
        """Splitting's output at every hook point (``families.json``, ``families@<hook>.json``) as one:
        the SAE names differ between hook points, and links join sizes of one hook point only."""
        paths = sorted((self.path / "splitting").glob("families*.json"))
        if not paths:
            return None
        merged: dict[str, Any] = {"labels": {}, "sources": {}, "after": {}, "links": []}
        for path in paths:
            data = json.loads(path.read_text())
            for name, f in data["features"].items():
                merged["labels"][name], merged["sources"][name] = f["label"], f.get("sources")
                merged["after"][name] = f.get("after")
            merged["links"] += data["links"]
        return merged

    def family(self, sae: str, feature: int) -> dict[str, Any] | None:
        """The feature's ancestors in the smaller SAEs and its descendants in the larger ones
        (splitting's parent links), each with its source mix, the tokens it follows and (a
        descendant) the share of its parent's activation it covers; ``None`` before splitting has run."""
        families = self._families
        if families is None or sae not in families["labels"]:
            return None
        labels, links = families["labels"], families["links"]

        def node(name: str, f: int, similarity: float | None = None) -> dict[str, Any]:
            sources, after = families["sources"][name], families["after"][name]
            return {
                "sae": name,
                "feature": f,
                "label": labels[name][f],
                "similarity": similarity,
                "sources": sources[f] if sources else [],
                "after": after[f] if after else [],
            }

        ancestors, name, f = [], sae, feature
        while (link := next((k for k in links if k["to"] == name), None)) is not None and link["parent"][f] >= 0:
            ancestors.insert(0, node(link["from"], link["parent"][f], link["similarity"][f]))
            name, f = link["from"], link["parent"][f]
        descendants, name, parents = [], sae, {feature}
        while parents and (link := next((k for k in links if k["from"] == name), None)) is not None:
            children = [j for j, p in enumerate(link["parent"]) if p in parents]
            coverage = link.get("parent_coverage") or [None] * len(link["parent"])
            descendants.append(
                {
                    "sae": link["to"],
                    "total": len(children),
                    "features": [
                        dict(
                            node(link["to"], j, link["similarity"][j]),
                            parent=link["parent"][j],
                            parent_coverage=coverage[j],
                        )
                        for j in children[:FAMILY_CHILDREN]
                    ],
                }
            )
            name, parents = link["to"], set(children)
        return {"ancestors": ancestors, "self": node(sae, feature), "descendants": descendants}
