"""Task suites: the embedded synthetic suite (:mod:`rmtllmf.data.synthetic`)."""
