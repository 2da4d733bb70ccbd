"""The verdict: does a variant's difference from another hold up, once every arm is tuned?

From the test scores of selected configurations retrained over seeds (``verdict.results``):
seed-level and session-level statistics (``verdict.stats``, ``verdict.seed_tests``,
``verdict.session_tests``), what the mean hides (``verdict.beyond``, ``verdict.popularity``),
tables and figures (``verdict.tables``, ``verdict.row_tables``, ``verdict.plots``) and the report
(``verdict.report``); a study's exported results and the report rebuilt from them
(``verdict.study_results``, ``verdict.study_report``). ``hpo`` searches and retrains; it hands
its results to ``verdict.report`` and never the other way round.
"""
