module portcullis.invalid/e2e/pause

go 1.26
