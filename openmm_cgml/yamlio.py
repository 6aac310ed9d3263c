"""Reading YAML files (configs, manifests) with errors of one line that say what to fix. Stage 0: imports only PyYAML."""
import yaml


def read_yaml_mapping(path: str, what: str = "config") -> dict:
    """The mapping in the YAML file ``path`` (an empty file is an empty mapping).

    Raises ``ValueError`` in one line when the file cannot be read, is not text, is not valid YAML
    (``safe_load``: no ``!!python`` tags) or does not hold a mapping; ``what`` names the file in the message.
    """
    try:
        with open(path) as f:
            values = yaml.safe_load(f)
    except OSError as err:
        raise ValueError(f"cannot read {what} {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{what} {path} is not a text (YAML) file") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{what} {path} is not valid YAML: {' '.join(str(err).split())}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(f"{what} {path} must hold a mapping")
    return values
