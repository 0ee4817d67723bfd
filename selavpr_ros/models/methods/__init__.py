"""The built-in methods, one module each: options, model, release importer, registry entry.

The registry imports every module here on first use; a new method is a new
module that ends with :func:`~selavpr_ros.models.registry.register_method`.
"""
