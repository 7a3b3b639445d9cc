# rundump.py MODELS OUTDIR CT...: ../../2026-12-02-s19/ilium-cue/rundump.py (the cascade as `spinert run`,
# plus each case's decoder calls), with Cascade overrides from env SPINERT_OVERRIDES (JSON)
import functools, json, os, runpy
import engine.pipeline as P
P.Cascade = functools.partial(P.Cascade, **json.loads(os.environ.get("SPINERT_OVERRIDES", "{}")))
runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../2026-12-02-s19/ilium-cue/rundump.py"),
               run_name="__main__")
