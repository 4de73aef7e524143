"""The evidence of an incident's conclusion: claims, checklist, gcloud commands (pure)."""
