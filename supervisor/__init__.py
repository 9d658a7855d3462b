"""The portierd supervisor process."""
