"""The site-data contract: schemas, tables, data kinds and the features they share."""
