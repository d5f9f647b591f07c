"""Exploratory data analysis: one self-contained HTML report for any dataset (`modalfuse eda`)."""
