"""The study report: stored runs as tables, scores, ranks beside the paper's, Kendall tau and
charts (`efficientllm report`); `build.build_report` selects and aggregates, `write.write_report`
writes HTML, Markdown and the charts."""
