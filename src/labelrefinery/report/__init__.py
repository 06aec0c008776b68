"""Reporting a run: the results table (:mod:`~.tables`), what refined labels say (:mod:`~.labelstats`), the
label-issue list (:mod:`~.labelissues`), and the HTML page of ``refinery inspect`` (:mod:`~.inspection`, drawn
by :mod:`~.html`).

Nothing is imported here: import the module you need (``from labelrefinery.report.tables import
format_table``), so reading one part never loads the others.
"""
