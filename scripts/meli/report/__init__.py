"""Report stage (rules/report.smk): aggregate runs, score the selected ones on test, render the HTML."""
