"""The HTML report (``ilm report --html``): one self-contained file, charts inline as SVG.

    charts.py               matplotlib figures -> <svg> text
    html.py                 report data -> charts and the page (Jinja2)
    templates/report.html.j2
"""
