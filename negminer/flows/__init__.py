"""Prefect tasks and flows: the only package that imports prefect."""
