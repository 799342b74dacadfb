"""Training stages (one readable loop), evaluation, pseudo-labels and centroids."""
