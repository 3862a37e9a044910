"""Long-sequence time-series forecasting: Informer and baselines on ETT / Weather / Exchange / ILI."""
