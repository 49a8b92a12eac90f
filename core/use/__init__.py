"""After training: practice (terminal, browser), evaluation, the report and export, on a plain model directory."""
