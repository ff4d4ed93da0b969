"""``eventstore simulate``: a soak test with faults that checks the design's promises (docs/simulate.md).

Modules: agents (simulated agents and their ledgers), hostile (hostile intake messages), processes
(projector processes and their supervisor), faults (schedule and injector), checks (the promise
checks), report (HTML with inline SVG), runner (the orchestration).
"""
