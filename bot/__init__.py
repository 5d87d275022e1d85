"""The Discord adapter for imgcls workshops (thin: validates, calls imgcls, renders)."""
